"""`/metrics`, and the middleware that reports every answered request to the telemetry.

The middleware reads what the request left on its scope (the route template, the model and the plan of
an admitted request) and times the answer: to its first body byte and to its end. Labels stay bounded:
the route template, never the raw path.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

from litestar import Request, Response, get
from litestar.types import Message, Receive, Scope, Send

from ollama_gate.domain.errors import Forbidden
from ollama_gate.entrypoints.inline_middleware import InlineMiddleware
from ollama_gate.entrypoints.openapi_contract import GATEWAY_SHAPE, answer, errors
from ollama_gate.entrypoints.request_context import container_of, principal_of
from ollama_gate.ports.telemetry import Telemetry
from ollama_gate.services.gatekeeper import Ticket

OTHER = "other"


def _labels(scope: Scope) -> tuple[str, str | None, str]:
    state: dict[str, Any] = scope.get("state", {})
    endpoint = scope.get("path_template") or OTHER
    ticket = state.get("ticket")
    plan = ticket.plan.name if isinstance(ticket, Ticket) else getattr(state.get("caller"), "plan", "")
    return str(endpoint), state.get("model"), plan or "none"


class _ObservedSend:
    """A request's `send` that notes its status and the time to its first body byte.

    An object of four slots rather than a closure over `nonlocal`s (a function, a cell per variable and
    their tuple): a request waiting for the GPU keeps it for as long as it waits. Not a coroutine: it hands
    back the wrapped `send`'s awaitable, so a streamed chunk makes no coroutine of its own here.
    """

    __slots__ = ("_send", "first_byte", "started", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = time.perf_counter()
        self.status = 0
        self.first_byte: float | None = None

    def __call__(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif self.first_byte is None and message.get("body"):
            self.first_byte = time.perf_counter() - self.started
        return self._send(message)


class RequestMetrics(InlineMiddleware):
    """App-wide: one `request_done` per answered request."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def enter(self, scope: Scope, receive: Receive, send: Send) -> tuple[Receive, Send, Any]:
        observed = _ObservedSend(send)
        return receive, observed, observed

    def exit(self, scope: Scope, token: Any, error: BaseException | None) -> bool:
        observed: _ObservedSend = token
        endpoint, model, plan = _labels(scope)
        self._telemetry.request_done(
            endpoint,
            model,
            plan,
            observed.status or 499,
            time.perf_counter() - observed.started,
            observed.first_byte,
        )
        return False


@get(
    "/metrics",
    summary="Prometheus metrics (admins; everyone with OLLAMA_GATE_METRICS_PUBLIC=true)",
    responses=answer(str, media_type="text/plain", description="The Prometheus text format")
    | errors(GATEWAY_SHAPE, 401, 403, 503),
)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    container = container_of(request)
    if not container.settings().metrics_public and not (await principal_of(request)).is_admin:
        raise Forbidden("metrics are for admins (or set OLLAMA_GATE_METRICS_PUBLIC=true)")
    exposition = container.metrics_exposition()
    # The exposition's own content type names its charset: Litestar would add a second one.
    return Response(exposition.exposition(), headers={"content-type": exposition.content_type})
