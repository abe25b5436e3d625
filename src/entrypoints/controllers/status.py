"""GET /api/status."""

from __future__ import annotations

from typing import Any

from litestar import Request, get

from ollama_gate.domain.errors import GatewayError
from ollama_gate.entrypoints.request_context import container_of, principal_of


@get("/api/status", summary="Uptime, machine, Ollama and usage")
async def status(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Public; admins also get the per-upstream block, with the servers' addresses."""
    try:
        is_admin = (await principal_of(request)).is_admin
    except GatewayError:
        is_admin = False  # a wrong or unverifiable credential only loses the admin's extra block
    return await container_of(request).status().status(include_upstreams=is_admin)
