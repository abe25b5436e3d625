"""Every error as JSON with a `detail`: domain errors, Litestar's own, and the unexpected (logged, 500).

On Ollama's paths and on /v1/* the same errors take Ollama's and OpenAI's shapes (see the end).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from ollama_gate.domain.errors import GatewayError, ModelNotFound, Unauthorized
from ollama_gate.domain.quota import Admission, QuotaExceeded
from ollama_gate.entrypoints.rate_limit_headers import rate_limit_headers
from ollama_gate.services.gatekeeper import Ticket

log = logging.getLogger("ollama_gate.errors")


def _admission_of(request: Request[Any, Any, Any]) -> Admission | None:
    ticket = request.scope.get("state", {}).get("ticket")
    return ticket.admission if isinstance(ticket, Ticket) else None


def gateway_error_response(request: Request[Any, Any, Any], error: GatewayError) -> Response[Any]:
    headers: dict[str, str] = {}
    content: dict[str, Any] = {"detail": error.detail}
    admission = error.admission if isinstance(error, QuotaExceeded) else _admission_of(request)
    headers.update(rate_limit_headers(admission))
    wait = error.admission.retry_after if isinstance(error, QuotaExceeded) else error.retry_after
    if wait is not None:
        retry_after = max(1, math.ceil(wait))
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


def undecodable_body_response(_request: Request[Any, Any, Any], _error: UnicodeDecodeError) -> Response[Any]:
    # Litestar turns msgspec's DecodeError in a request body into 400 but lets invalid UTF-8 inside a
    # JSON string escape as UnicodeDecodeError (msgspec raises it, not DecodeError): still the client's fault.
    return Response({"detail": "invalid request: the body is not valid UTF-8"}, status_code=400)


def too_deep_response(_request: Request[Any, Any, Any], _error: RecursionError) -> Response[Any]:
    # The last line of defence: bodies are checked for depth before they are decoded (see body_depth).
    return Response({"detail": "invalid request: the body is nested too deeply"}, status_code=400)


def unexpected_error_response(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
    return Response({"detail": "internal server error"}, status_code=HTTP_500_INTERNAL_SERVER_ERROR)


exception_handlers: Any = {
    GatewayError: gateway_error_response,
    HTTPException: http_error_response,
    UnicodeDecodeError: undecodable_body_response,
    RecursionError: too_deep_response,
    Exception: unexpected_error_response,
}


# -- Error shapes per path family: Ollama's clients and the OpenAI SDKs read their own shape -------------

_OLLAMA_PATHS = frozenset(
    {
        "/",
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/show",
        "/api/tags",
        "/api/ps",
        "/api/version",
        "/api/pull",
        "/api/push",
        "/api/delete",
        "/api/create",
        "/api/copy",
    }
)
# OpenAI's (type, code) per status; a status not listed is a server error.
_OPENAI_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("requests", "rate_limit_exceeded"),
}


def is_ollama_path(path: str) -> bool:
    return path in _OLLAMA_PATHS or path.startswith("/api/blobs/")


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def ollama_error_body(message: str) -> dict[str, Any]:
    return {"error": message}


def openai_error_body(status: int, message: str, error: Exception) -> dict[str, Any]:
    kind, code = _OPENAI_KINDS.get(status, ("server_error", None))
    if isinstance(error, ModelNotFound):
        code = "model_not_found"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _shaped_by_path(handler: Callable[[Request[Any, Any, Any], Any], Response[Any]]) -> Any:
    """`handler`, with its `{"detail"}` body reshaped on Ollama's paths and on /v1/*."""

    def shaped(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
        response = handler(request, error)
        content, path = response.content, request.scope.get("path", "")
        if isinstance(content, dict) and "detail" in content:
            message = str(content["detail"])
            if is_ollama_path(path):
                response.content = ollama_error_body(message)
            elif is_openai_path(path):
                response.content = openai_error_body(response.status_code or 500, message, error)
        return response

    return shaped


exception_handlers = {kind: _shaped_by_path(handler) for kind, handler in exception_handlers.items()}
