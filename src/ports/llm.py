from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from ollama_gate.domain.status import ModelInfo


class UpstreamResponse(Protocol):
    """An open upstream response. Reading raises UpstreamTimeout / UpstreamUnavailable on failure."""

    @property
    def status(self) -> int: ...

    async def read(self) -> bytes:
        """The whole body."""
        ...

    def lines(self) -> AsyncIterator[bytes]:
        """The body line by line, as it arrives, without the trailing newline; empty lines skipped."""
        ...

    def close(self) -> None:
        """Release the connection; an unfinished body aborts it, so Ollama stops generating."""
        ...


class LLMBackend(Protocol):
    """Ollama, reached over HTTP."""

    async def post(self, path: str, body: bytes) -> UpstreamResponse:
        """Send a JSON request; returns once the status line is in.

        Raises UpstreamUnavailable when Ollama cannot be reached, UpstreamTimeout when it goes silent.
        """
        ...

    async def models(self, timeout: float) -> list[ModelInfo]:
        """The installed models (`GET /api/tags`) within `timeout` seconds."""
        ...
