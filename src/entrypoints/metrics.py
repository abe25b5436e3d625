"""`/metrics`, and the middleware that reports every answered request to the telemetry.

The middleware reads what the request left on its scope (the route template, the model and the plan of
an admitted request) and times the answer: to its first body byte and to its end. Labels stay bounded:
the route template, never the raw path.
"""

from __future__ import annotations

import time
from typing import Any

from litestar import Request, Response, get
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from ollama_gate.domain.errors import Forbidden
from ollama_gate.domain.quota import Admission
from ollama_gate.entrypoints.openapi_contract import GATEWAY_SHAPE, answer, errors
from ollama_gate.entrypoints.request_context import container_of, principal_of
from ollama_gate.ports.telemetry import Telemetry

OTHER = "other"


def _labels(scope: Scope) -> tuple[str, str | None, str]:
    state: dict[str, Any] = scope.get("state", {})
    endpoint = scope.get("path_template") or OTHER
    admission = state.get("admission")
    plan = (
        admission.limits.plan
        if isinstance(admission, Admission)
        else getattr(state.get("caller"), "plan", "")
    )
    return str(endpoint), state.get("model"), plan or "none"


def metrics_middleware(telemetry: Telemetry) -> Any:
    """App-wide: one `request_done` per answered request."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def measured(scope: Scope, receive: Receive, send: Send) -> None:
            started = time.perf_counter()
            status, first_byte = 0, None

            async def observe(message: Message) -> None:
                nonlocal status, first_byte
                if message["type"] == "http.response.start":
                    status = message["status"]
                elif first_byte is None and message.get("body"):
                    first_byte = time.perf_counter() - started
                await send(message)

            try:
                await app(scope, receive, observe)
            finally:
                endpoint, model, plan = _labels(scope)
                telemetry.request_done(
                    endpoint, model, plan, status or 499, time.perf_counter() - started, first_byte
                )

        return measured

    return wrap


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
