"""GET /api/usage."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypedDict

from litestar import Request, get
from litestar.params import Parameter

from ollama_gate.domain.usage import UsageRecord
from ollama_gate.entrypoints.openapi_contract import GATEWAY_SHAPE, UserIdQuery, errors
from ollama_gate.entrypoints.request_context import container_of, principal_of
from ollama_gate.services.usage_reports import MAX_USAGE_LIMIT

DEFAULT_USAGE_LIMIT = 50


class UsageRow(TypedDict):
    id: int | None
    timestamp: datetime
    user: str
    tier: str
    key_id: int | None
    client_ip: str
    endpoint: str
    model: str | None
    status: int
    outcome: str  # ok | upstream_error | cancelled
    latency_ms: float
    prompt_tokens: int | None
    completion_tokens: int | None
    plan: str | None
    queue_ms: float | None
    request_id: str | None


class UsageList(TypedDict):
    logs: list[UsageRow]
    count: int


def usage_view(record: UsageRecord) -> UsageRow:
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


@get("/api/usage", summary="Usage rows, newest first", responses=errors(GATEWAY_SHAPE, 400, 401, 403, 503))
async def list_usage(
    request: Request[Any, Any, Any],
    user_id: UserIdQuery = None,
    limit: Annotated[
        int, Parameter(ge=1, le=MAX_USAGE_LIMIT, description=f"1-{MAX_USAGE_LIMIT} rows, newest first")
    ] = DEFAULT_USAGE_LIMIT,
) -> UsageList:
    principal = await principal_of(request)
    records = await container_of(request).usage_reports().recent(principal, limit, user_id)
    return {"logs": [usage_view(r) for r in records], "count": len(records)}
