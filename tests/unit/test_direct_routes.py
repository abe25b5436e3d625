"""DirectRoutes (entrypoints/direct_routes.py): the marked handlers are called without Litestar's router,
with their hook, their middleware and the app's exception handlers, as Litestar would call them."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar, Request, get, post
from litestar.exceptions import ImproperlyConfiguredException
from litestar.testing import AsyncTestClient
from litestar.utils.scope.state import CONNECTION_STATE_KEY

from ollama_gate.domain.errors import Unauthorized
from ollama_gate.entrypoints.asgi_answers import JSON, BodyAnswer
from ollama_gate.entrypoints.direct_routes import DirectRoutes, direct
from ollama_gate.entrypoints.http_errors import exception_handlers

seen: list[str] = []


async def check_key(request: Request[Any, Any, Any]) -> None:
    seen.append("hook")
    if request.headers.get("x-api-key") != "good":
        raise Unauthorized("invalid API key")


def recording(app: Any) -> Any:
    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        seen.append(f"middleware {scope['path_template']}")
        await app(scope, receive, send)

    return middleware


@post("/echo", before_request=check_key, middleware=[recording], opt=direct())
async def echo(request: Request[Any, Any, Any]) -> BodyAnswer:
    seen.append("handler")
    return BodyAnswer(await request.body(), JSON, [(b"x-echo", b"1")])


@post("/lazy", opt=direct())
async def lazy(request: Request[Any, Any, Any]) -> BodyAnswer:
    # Litestar's per-request state is made by the first read that needs it, not before.
    seen.append(f"state before {CONNECTION_STATE_KEY in request.scope['state']}")
    described = f"{request.method} {request.url.path} {request.headers.get('x-tag')} {await request.body()!r}"
    seen.append(f"state after {CONNECTION_STATE_KEY in request.scope['state']}")
    return BodyAnswer(described.encode(), JSON)


@get("/plain")
async def plain() -> dict[str, str]:
    return {"via": "litestar"}


def app_with_spy() -> tuple[Litestar, list[str]]:
    app = Litestar([echo, lazy, plain], exception_handlers=exception_handlers)
    through_litestar: list[str] = []
    inner = app.asgi_handler

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        through_litestar.append(f"{scope['method']} {scope['path']}")
        await inner(scope, receive, send)

    app.asgi_handler = DirectRoutes(app, spy, exception_handlers)
    return app, through_litestar


@pytest.fixture(autouse=True)
def forget() -> None:
    seen.clear()


async def test_a_marked_route_is_served_directly_with_its_hook_and_middleware() -> None:
    app, through_litestar = app_with_spy()
    async with AsyncTestClient(app) as client:
        response = await client.post("/echo", content=b'{"a": 1}', headers={"X-API-Key": "good"})
    assert (response.status_code, response.content, response.headers["x-echo"]) == (200, b'{"a": 1}', "1")
    assert seen == ["middleware /echo", "hook", "handler"]
    assert through_litestar == []


async def test_the_request_is_litestars_and_makes_its_state_only_when_it_is_read() -> None:
    app, _ = app_with_spy()
    async with AsyncTestClient(app) as client:
        response = await client.post("/lazy", content=b"body", headers={"X-Tag": "t"})
    assert response.content == b"POST /lazy t b'body'"
    assert seen == ["state before False", "state after True"]


async def test_what_a_hook_raises_is_answered_by_the_apps_exception_handlers() -> None:
    app, _ = app_with_spy()
    async with AsyncTestClient(app) as client:
        response = await client.post("/echo", content=b"{}")
    assert response.status_code == 401
    assert response.json() == {"detail": "invalid API key"}
    assert response.headers["www-authenticate"] == 'Bearer realm="ollama-gate"'
    assert "handler" not in seen


async def test_other_methods_and_paths_go_through_litestar() -> None:
    app, through_litestar = app_with_spy()
    async with AsyncTestClient(app) as client:
        wrong_method = await client.get("/echo")
        other = await client.get("/plain")
    assert wrong_method.status_code == 405
    assert other.json() == {"via": "litestar"}
    assert through_litestar == ["GET /echo", "GET /plain"]


def test_a_handler_litestar_must_prepare_cannot_be_marked() -> None:
    @post("/typed", opt=direct())
    async def typed(request: Request[Any, Any, Any], data: dict[str, Any]) -> BodyAnswer:
        return BodyAnswer(b"", JSON)

    app = Litestar([typed])
    with pytest.raises(ImproperlyConfiguredException, match="cannot be called directly"):
        DirectRoutes(app, app.asgi_handler, exception_handlers)


def test_a_handler_with_a_request_class_of_its_own_cannot_be_marked() -> None:
    class OwnRequest(Request[Any, Any, Any]):
        pass

    @post("/own", opt=direct(), request_class=OwnRequest)
    async def own(request: Request[Any, Any, Any]) -> BodyAnswer:
        return BodyAnswer(b"", JSON)

    app = Litestar([own])
    with pytest.raises(ImproperlyConfiguredException, match="Litestar's own class"):
        DirectRoutes(app, app.asgi_handler, exception_handlers)
