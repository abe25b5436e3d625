"""Every failure the gateway can answer with, each with the status it is answered with."""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    """Base of the errors that become a client-facing answer (never a 500). `retry_after`, when set, is
    the seconds after which trying again may succeed (the answer's Retry-After)."""

    status: ClassVar[int] = 500
    retry_after: float | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRequest(GatewayError):
    """The request itself is wrong (400)."""

    status = 400


class Unauthorized(GatewayError):
    """A credential was presented and is not valid (401)."""

    status = 401


class Forbidden(GatewayError):
    """The caller is known but may not do this (403)."""

    status = 403


class NotFound(GatewayError):
    """The thing asked for does not exist (404)."""

    status = 404


class ModelNotFound(NotFound):
    """Ollama does not know the requested model (404)."""


class Conflict(GatewayError):
    """The thing cannot change now (409): a plan still in use, a built-in plan."""

    status = 409


class ModelNotAllowed(Forbidden):
    """The caller's plan does not include the model (403)."""

    def __init__(self, model: str, plan: str) -> None:
        super().__init__(f"model '{model}' is not available on plan '{plan}'")


class UpstreamRejected(GatewayError):
    """Ollama refused the request as malformed (400 passed through)."""

    status = 400


class UpstreamError(GatewayError):
    """Ollama answered with a server error (502)."""

    status = 502


class UpstreamBusy(GatewayError):
    """Ollama's queue is full (503, retryable)."""

    status = 503


class UpstreamUnavailable(GatewayError):
    """Ollama cannot be reached at all (503)."""

    status = 503


class UpstreamTimeout(GatewayError):
    """Ollama accepted the request but went silent past the read timeout (504)."""

    status = 504


class StoreUnavailable(GatewayError):
    """The database cannot be reached (503)."""

    status = 503

    def __init__(self, detail: str = "database unavailable") -> None:
        super().__init__(detail)


class LimiterUnavailable(GatewayError):
    """The shared rate limiter cannot be reached and the configuration says deny (503)."""

    status = 503


class QueueRefused(GatewayError):
    """A bound of the GPU queue turned the request away: it never reached Ollama, and consumed nothing
    of its plan (no usage row either: like a 429, a refusal is counted, not logged as usage)."""


class QueueFull(QueueRefused):
    """The gateway's GPU queue holds as many requests as it may (503)."""

    status = 503
    retry_after = 5.0


class TooManyQueued(QueueRefused):
    """The caller already has as many requests waiting for the GPU as it may (429)."""

    status = 429
    retry_after = 1.0


class QueueTimeout(QueueRefused):
    """The request waited its plan's `queue_timeout` for a GPU slot (503)."""

    status = 503

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
