"""A chat request, what Ollama is sent for it, and what Ollama's answers mean."""

from __future__ import annotations

from typing import Any

from ollama_gate.domain.errors import (
    GatewayError,
    ModelNotFound,
    UpstreamBusy,
    UpstreamError,
    UpstreamRejected,
)
from ollama_gate.domain.immutable import immutable


@immutable
class ChatRequest:
    message: str
    model: str | None = None
    system: str | None = None
    options: dict[str, Any] | None = None

    def generate_payload(self, default_model: str, stream: bool) -> dict[str, Any]:
        """The body of Ollama's `POST /api/generate` for this request."""
        payload: dict[str, Any] = {
            "model": self.model or default_model,
            "prompt": self.message,
            "stream": stream,
        }
        if self.system is not None:
            payload["system"] = self.system
        if self.options is not None:
            payload["options"] = self.options
        return payload


def upstream_failure(status: int, error_text: str, model: str | None) -> GatewayError:
    """The gateway's answer to a non-200 from Ollama, given the text of its `{"error": ...}` body."""
    if status == 404:
        return ModelNotFound(f"model '{model}' not found" if model else error_text or "not found")
    if status == 400:
        return UpstreamRejected(error_text or "Ollama rejected the request")
    if status == 503:
        return UpstreamBusy(error_text or "Ollama is busy")
    return UpstreamError(
        f"Ollama error ({status}): {error_text}" if error_text else f"Ollama error ({status})"
    )
