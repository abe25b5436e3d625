"""GET /api/usage."""

from __future__ import annotations

from typing import Any

from litestar import Request, get

from ollama_gate.domain.errors import InvalidRequest
from ollama_gate.domain.usage import UsageRecord
from ollama_gate.entrypoints.request_context import container_of, principal_of
from ollama_gate.services.usage_reports import MAX_USAGE_LIMIT

DEFAULT_USAGE_LIMIT = 50


def usage_view(record: UsageRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "timestamp": record.timestamp,
        "user": record.user,
        "tier": record.tier.value,
        "key_id": record.key_id,
        "client_ip": record.client_ip,
        "endpoint": record.endpoint,
        "model": record.model,
        "status": record.status,
        "outcome": record.outcome.value,
        "latency_ms": record.latency_ms,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "plan": record.plan,
        "queue_ms": record.queue_ms,
        "request_id": record.request_id,
    }


def _limit(request: Request[Any, Any, Any]) -> int:
    text = request.query_params.get("limit")
    if text is None:
        return DEFAULT_USAGE_LIMIT
    try:
        return int(text)
    except ValueError:
        raise InvalidRequest(f"limit must be an integer between 1 and {MAX_USAGE_LIMIT}") from None


@get("/api/usage", summary="Usage rows, newest first")
async def list_usage(request: Request[Any, Any, Any], user_id: str | None = None) -> dict[str, Any]:
    principal = await principal_of(request)
    records = await container_of(request).usage_reports().recent(principal, _limit(request), user_id)
    return {"logs": [usage_view(r) for r in records], "count": len(records)}
