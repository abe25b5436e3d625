"""GET /api/status."""

from __future__ import annotations

from typing import Any

from litestar import Request, get

from ollama_gate.entrypoints.request_context import container_of


@get("/api/status", summary="Uptime, machine, Ollama and usage")
async def status(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return await container_of(request).status().status()
