"""LitestarEntry (entrypoints/litestar_entry.py): the server calls the app's handler as Litestar.__call__
would, with the scope marked the same way, and keeps no coroutine of its own while the request runs."""

from __future__ import annotations

import inspect
from typing import Any

from litestar import Litestar, get

from ollama_gate.entrypoints.http_server import GatewayConfig, HttpLimits
from ollama_gate.entrypoints.litestar_entry import LitestarEntry, entry_of


@get("/hello", sync_to_thread=False)
def hello() -> dict[str, str]:
    return {"hello": "world"}


async def _call(entry: Any, path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await entry(scope, receive, send)
    return scope, sent


async def test_a_request_is_answered_by_the_apps_handler_with_the_scope_marked_as_litestar_does() -> None:
    app = Litestar([hello])
    handler_calls: list[str] = []
    inner = app.asgi_handler

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        handler_calls.append(scope["path"])
        await inner(scope, receive, send)

    app.asgi_handler = handler
    entry = entry_of(app)
    assert isinstance(entry, LitestarEntry)
    scope, sent = await _call(entry, "/hello")
    assert handler_calls == ["/hello"]
    assert scope["app"] is app and scope["litestar_app"] is app and "state" in scope
    assert sent[0]["status"] == 200 and sent[1]["body"] == b'{"hello":"world"}'


def test_the_entry_hands_back_the_handlers_own_coroutine() -> None:
    app = Litestar([hello])
    entry = LitestarEntry(app)
    assert not inspect.iscoroutinefunction(type(entry).__call__)
    marker = object()
    app.asgi_handler = lambda scope, receive, send: marker  # type: ignore[assignment,return-value]
    assert entry({"type": "http"}, None, None) is marker  # type: ignore[arg-type]


async def test_an_app_with_before_send_hooks_and_anything_else_are_called_as_they_are() -> None:
    async def hook(message: Any, scope: Any) -> None:
        pass

    app = Litestar([hello], before_send=[hook])
    assert entry_of(app) is app
    other = object()
    assert entry_of(other) is other


def test_the_gateways_server_calls_the_entry_as_an_asgi3_app() -> None:
    app = Litestar([hello])
    config = GatewayConfig(app, HttpLimits(), log_config=None)
    config.load()
    assert config.interface == "asgi3"
    assert isinstance(config.loaded_app, LitestarEntry) and config.loaded_app.app is app
