"""What every HTTP request gets at the edge of the app: its id, the `X-Request-ID` header on its answer,
and (when access lines are wanted) its access line.

It wraps the whole app, outside Litestar's router: answers that no route produced (404, 405, errors of
the exception handlers) and the forwarding routes' bare ASGI answers get the header like any other. One
wrapper for both jobs, so the hot path pays one extra `send` hop per message, not two.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from ollama_gate.entrypoints.access_log import AccessLog
from ollama_gate.entrypoints.request_ids import HEADER, RequestIds

REQUEST_ID = "request_id"  # its key in the request's scope state


class _SendWithId:
    """A request's `send` that adds its id to the response's head, and notes the status (for the access
    line).

    An object of slots rather than a closure (a function, its cells, their tuple, and the header encoded
    up front): a request waiting for the GPU keeps it for as long as it waits, and the header is needed
    only once, when the answer starts. Not a coroutine: it hands back the wrapped `send`'s awaitable.
    """

    __slots__ = ("_request_id", "_send", "status")

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self._request_id = request_id
        self.status = 0

    def __call__(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            id_header = (HEADER, self._request_id.encode("ascii"))
            message["headers"] = [*message.get("headers", ()), id_header]
        return self._send(message)


class RequestEdge:
    __slots__ = ("_access", "_app", "_ids")

    def __init__(self, app: ASGIApp, ids: RequestIds, access: AccessLog | None = None) -> None:
        self._app = app
        self._ids = ids
        self._access = access

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Without access lines, not a coroutine itself: it hands back the app's, so it keeps no frame
        # alive while the request runs (a request waiting for the GPU holds every frame of its chain).
        if scope["type"] != ScopeType.HTTP:
            return self._app(scope, receive, send)
        request_id = self._ids.of(scope["headers"])
        state: dict[str, Any] = scope.setdefault("state", {})
        state[REQUEST_ID] = request_id
        sender = _SendWithId(send, request_id)
        if self._access is not None:
            return self._logged(scope, receive, sender, self._access)
        return self._app(scope, receive, sender)

    async def _logged(self, scope: Scope, receive: Receive, send: _SendWithId, access: AccessLog) -> None:
        started = time.perf_counter()
        try:
            await self._app(scope, receive, send)
        finally:
            # 499: the client left before any answer (nginx's convention).
            access.write(scope, send.status or 499, time.perf_counter() - started)
