"""One access line per request, with the client address the gateway decided on.

uvicorn's own access log shows the TCP peer (or, with its proxy headers on, whatever a client wrote in
`X-Forwarded-For`); this one shows the address the gateway's trusted-proxy rule gave, and who the caller
was. Never a key: the line holds the path (no query string), never a header.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from ollama_gate.domain.identity import Caller

log = logging.getLogger("ollama_gate.access")


def access_line(scope: Scope, status: int, seconds: float, client_ip: str) -> str:
    """`203.0.113.7 "POST /chat HTTP/1.1" 200 3.1ms user=alice tier=member`."""
    state: dict[str, Any] = scope.get("state", {})
    caller = state.get("caller")
    who = f" user={caller.user} tier={caller.tier.value}" if isinstance(caller, Caller) else ""
    request_line = (
        f"{scope.get('method', '-')} {scope.get('path', '-')} HTTP/{scope.get('http_version', '1.1')}"
    )
    return f'{client_ip} "{request_line}" {status} {seconds * 1000:.1f}ms{who}'


class AccessLog:
    """ASGI middleware writing `access_line` once the answer is complete (or the client gone)."""

    def __init__(self, app: ASGIApp, client_ip: Callable[[Scope], str]) -> None:
        self._app = app
        self._client_ip = client_ip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 0

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, record_status)
        finally:
            # 499: the client left before any answer (nginx's convention).
            log.info(access_line(scope, status or 499, time.perf_counter() - started, self._client_ip(scope)))


def access_log_middleware(client_ip: Callable[[Scope], str]) -> Callable[[ASGIApp], ASGIApp]:
    """The app-wide middleware (installed only when access lines are wanted: it costs a wrapper per send)."""

    def wrap(app: ASGIApp) -> ASGIApp:
        return AccessLog(app, client_ip)

    return wrap
