"""InlineMiddleware (entrypoints/inline_middleware.py): entries outermost first, exits innermost first, an
error handled inside is no error outside; Litestar stacks it like any middleware, and a direct route runs
it in its own coroutine (a waiting request keeps no frame per middleware)."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest
from litestar import Litestar, Request, get, post
from litestar.testing import AsyncTestClient

from ollama_gate.entrypoints.asgi_answers import JSON, BodyAnswer
from ollama_gate.entrypoints.direct_routes import DirectRoutes, direct
from ollama_gate.entrypoints.http_errors import exception_handlers
from ollama_gate.entrypoints.inline_middleware import Entered, InlineMiddleware, enter_all


class Noting(InlineMiddleware):
    """Notes its entry and exit in `log`, tags what the app sends, and handles `handles`."""

    def __init__(self, name: str, log: list[str], handles: type[BaseException] | None = None) -> None:
        self.name = name
        self.log = log
        self.handles = handles

    def enter(self, scope: Any, receive: Any, send: Any) -> tuple[Any, Any, Any]:
        self.log.append(f"enter {self.name}")

        async def tagged(message: dict[str, Any]) -> None:
            message.setdefault("tags", []).append(self.name)
            await send(message)

        return receive, tagged, self.name.upper()

    def exit(self, scope: Any, token: Any, error: BaseException | None) -> bool:
        self.log.append(f"exit {self.name} {token} {type(error).__name__ if error else None}")
        return self.handles is not None and isinstance(error, self.handles)


async def nothing() -> Any:
    return {"type": "http.request", "body": b"", "more_body": False}


NO_SCOPE: Any = {}


async def test_entries_go_outermost_first_and_exits_innermost_first() -> None:
    log: list[str] = []
    chain = (Noting("outer", log), Noting("inner", log))
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    receive, wrapped_send, entered = enter_all(chain, NO_SCOPE, nothing, send)
    with entered:
        start: Any = {"type": "http.response.start"}
        await wrapped_send(start)
    assert receive is nothing
    assert sent == [{"type": "http.response.start", "tags": ["inner", "outer"]}]
    assert log == ["enter outer", "enter inner", "exit inner INNER None", "exit outer OUTER None"]


def test_an_error_handled_inside_is_no_error_to_the_exits_outside() -> None:
    log: list[str] = []
    chain = (Noting("outer", log), Noting("inner", log, handles=asyncio.CancelledError))
    with Entered(chain, NO_SCOPE, ["OUTER", "INNER"]):
        raise asyncio.CancelledError()
    assert log == ["exit inner INNER CancelledError", "exit outer OUTER None"]
    log.clear()
    with pytest.raises(ValueError, match="not handled"), Entered(chain, NO_SCOPE, ["OUTER", "INNER"]):
        raise ValueError("not handled")
    assert log == ["exit inner INNER ValueError", "exit outer OUTER ValueError"]


@pytest.mark.parametrize("served_directly", [True, False])
async def test_a_route_runs_its_inline_middleware_the_same_directly_and_through_litestar(
    served_directly: bool,
) -> None:
    log: list[str] = []

    @post("/fails", middleware=[Noting("route", log, handles=KeyError)], opt=direct())
    async def fails(request: Request[Any, Any, Any]) -> BodyAnswer:
        log.append("handler")
        raise KeyError("quietly")

    @post("/answers", middleware=[Noting("route", log)], opt=direct())
    async def answers(request: Request[Any, Any, Any]) -> BodyAnswer:
        log.append("handler")
        return BodyAnswer(b"{}", JSON)

    app = Litestar([fails, answers], middleware=[Noting("app", log)], exception_handlers=exception_handlers)
    if served_directly:
        app.asgi_handler = DirectRoutes(app, app.asgi_handler, exception_handlers)
    async with AsyncTestClient(app) as client:
        assert (await client.post("/answers")).status_code == 200
        assert log == ["enter app", "enter route", "handler", "exit route ROUTE None", "exit app APP None"]
        log.clear()
        # The handler's error is answered by the app's handlers before any exit sees it (500 here).
        assert (await client.post("/fails")).status_code == 500
        assert log == ["enter app", "enter route", "handler", "exit route ROUTE None", "exit app APP None"]


async def test_a_direct_route_keeps_no_coroutine_per_middleware_while_it_waits() -> None:
    log: list[str] = []
    waiting = asyncio.Event()
    release = asyncio.Event()

    @get("/waits", middleware=[Noting("route", log)], opt=direct())
    async def waits(request: Request[Any, Any, Any]) -> BodyAnswer:
        waiting.set()
        await release.wait()
        return BodyAnswer(b"{}", JSON)

    app = Litestar([waits], middleware=[Noting("app", log)], exception_handlers=exception_handlers)
    routes = DirectRoutes(app, app.asgi_handler, exception_handlers)
    scope: Any = {"type": "http", "method": "GET", "path": "/waits", "headers": [], "query_string": b""}
    scope |= {"app": app, "litestar_app": app, "state": {}}

    async def send(message: Any) -> None:
        pass

    request: asyncio.Task[Any] = asyncio.create_task(routes(scope, nothing, send))  # type: ignore[arg-type]
    await waiting.wait()
    chain: list[str] = []
    awaited: Any = request.get_coro()
    while isinstance(awaited, types.CoroutineType):
        chain.append(awaited.__qualname__)
        awaited = awaited.cr_await
    assert chain[:2] == [
        "DirectRoutes._serve.<locals>.serve",
        "test_a_direct_route_keeps_no_coroutine_per_middleware_while_it_waits.<locals>.waits",
    ]
    release.set()
    await request
    assert log[0:2] == ["enter app", "enter route"] and log[-1] == "exit app APP None"
