"""Every error as JSON with a `detail`: domain errors, Litestar's own, and the unexpected (logged, 500)."""

from __future__ import annotations

import logging
import math
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from ollama_gate.domain.errors import GatewayError, RateLimited, Unauthorized
from ollama_gate.domain.ratelimit import Decision
from ollama_gate.entrypoints.rate_limit_headers import rate_limit_headers

log = logging.getLogger("ollama_gate.errors")


def _decision_of(request: Request[Any, Any, Any]) -> Decision | None:
    decision = request.scope.get("state", {}).get("decision")
    return decision if isinstance(decision, Decision) else None


def gateway_error_response(request: Request[Any, Any, Any], error: GatewayError) -> Response[Any]:
    headers: dict[str, str] = {}
    content: dict[str, Any] = {"detail": error.detail}
    decision = error.decision if isinstance(error, RateLimited) else _decision_of(request)
    if decision is not None:
        headers.update(rate_limit_headers(decision))
    if isinstance(error, RateLimited):
        retry_after = max(1, math.ceil(error.decision.retry_after))
        headers["Retry-After"] = str(retry_after)
        content["retry_after"] = retry_after
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="ollama-gate"'
    return Response(content, status_code=error.status, headers=headers)


def _validation_detail(error: ValidationException) -> str:
    problems = error.extra if isinstance(error.extra, list) else []
    parts = []
    for problem in problems:
        if isinstance(problem, dict) and "message" in problem:
            key = problem.get("key")
            parts.append(f"{key}: {problem['message']}" if key and key != "data" else str(problem["message"]))
    return "invalid request: " + "; ".join(parts) if parts else error.detail


def http_error_response(_request: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    detail = _validation_detail(error) if isinstance(error, ValidationException) else error.detail
    return Response({"detail": detail}, status_code=error.status_code, headers=error.headers)


def unexpected_error_response(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
    return Response({"detail": "internal server error"}, status_code=HTTP_500_INTERNAL_SERVER_ERROR)


exception_handlers: Any = {
    GatewayError: gateway_error_response,
    HTTPException: http_error_response,
    Exception: unexpected_error_response,
}
