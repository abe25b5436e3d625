"""GET /api/usage (pages of rows), /api/usage/summary (totals per group), /api/usage/export (CSV)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncGenerator, Iterable
from datetime import datetime
from typing import Annotated, Any, TypedDict, cast

from litestar import Request, get
from litestar.params import Parameter
from litestar.response import Stream

from ollama_gate.domain.access import require_someone
from ollama_gate.domain.errors import InvalidRequest
from ollama_gate.domain.usage import UsageRecord
from ollama_gate.domain.usage_query import GroupBy, UsageFilter, UsageGroup, parse_group_by, usage_filter
from ollama_gate.entrypoints.openapi_contract import GATEWAY_SHAPE, UserIdQuery, answer, errors
from ollama_gate.entrypoints.request_context import container_of, principal_of
from ollama_gate.services.usage_reports import MAX_USAGE_LIMIT

DEFAULT_USAGE_LIMIT = 50
CSV_MEDIA_TYPE = "text/csv"  # Litestar adds "; charset=utf-8" to text types
EXPORT_CHUNK_ROWS = 1000

# The fields of a usage row, in order: the JSON rows' keys and the export's header line.
USAGE_FIELDS = (
    "id",
    "timestamp",
    "user",
    "tier",
    "key_id",
    "client_ip",
    "endpoint",
    "model",
    "status",
    "outcome",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "plan",
    "queue_ms",
    "request_id",
)


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


class UsagePage(TypedDict):
    logs: list[UsageRow]
    count: int
    next_cursor: str | None  # pass back as `?cursor=` with the same filters; null on the last page


class UsageSummary(TypedDict):
    group_by: str
    # Each group: its key under the `group_by` name, then requests, prompt_tokens, completion_tokens,
    # errors, cancelled, p50_latency_ms, p95_latency_ms, mean_queue_ms.
    groups: list[dict[str, Any]]


# The query parameters the three share, documented; the domain's parser (usage_filter) checks them.
Since = Annotated[
    str | None, Parameter(description="ISO 8601 date or time, inclusive (UTC unless an offset)")
]
Until = Annotated[
    str | None, Parameter(description="ISO 8601 date or time, exclusive (UTC unless an offset)")
]
ModelQuery = Annotated[str | None, Parameter(description="Only rows of this model")]
StatusQuery = Annotated[str | None, Parameter(description="Only rows of this HTTP status")]
OutcomeQuery = Annotated[str | None, Parameter(description="ok, upstream_error or cancelled")]
USAGE_ERRORS = errors(GATEWAY_SHAPE, 400, 401, 403, 503)


def usage_values(record: UsageRecord) -> tuple[Any, ...]:
    """A row's values in USAGE_FIELDS order."""
    return (
        record.id,
        record.timestamp,
        record.user,
        record.tier.value,
        record.key_id,
        record.client_ip,
        record.endpoint,
        record.model,
        record.status,
        record.outcome.value,
        record.latency_ms,
        record.prompt_tokens,
        record.completion_tokens,
        record.plan,
        record.queue_ms,
        record.request_id,
    )


def usage_view(record: UsageRecord) -> UsageRow:
    return cast(UsageRow, dict(zip(USAGE_FIELDS, usage_values(record), strict=True)))


def summary_view(group: UsageGroup, group_by: GroupBy) -> dict[str, Any]:
    return {
        group_by.value: group.key,
        "requests": group.requests,
        "prompt_tokens": group.prompt_tokens,
        "completion_tokens": group.completion_tokens,
        "errors": group.errors,
        "cancelled": group.cancelled,
        "p50_latency_ms": group.p50_latency_ms,
        "p95_latency_ms": group.p95_latency_ms,
        "mean_queue_ms": group.mean_queue_ms,
    }


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_USAGE_LIMIT
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > len(str(MAX_USAGE_LIMIT)):
        raise InvalidRequest(f"limit must be an integer between 1 and {MAX_USAGE_LIMIT}")
    return int(text)


@get("/api/usage", summary="Usage rows, newest first, filtered, in pages", responses=USAGE_ERRORS)
async def list_usage(
    request: Request[Any, Any, Any],
    user_id: UserIdQuery = None,
    limit: Annotated[
        str | None, Parameter(description=f"1-{MAX_USAGE_LIMIT} rows (default {DEFAULT_USAGE_LIMIT})")
    ] = None,
    since: Since = None,
    until: Until = None,
    model: ModelQuery = None,
    status: StatusQuery = None,
    outcome: OutcomeQuery = None,
    cursor: Annotated[str | None, Parameter(description="A page's `next_cursor`")] = None,
) -> UsagePage:
    principal = await principal_of(request)
    require_someone(principal)
    filters = usage_filter(since, until, model, status, outcome, cursor)
    page = await container_of(request).usage_reports().page(principal, _limit(limit), user_id, filters)
    return {
        "logs": [usage_view(r) for r in page.records],
        "count": len(page.records),
        # A string, to be passed back as it is: `?cursor=<next_cursor>` with the same filters.
        "next_cursor": None if page.next_cursor is None else str(page.next_cursor),
    }


@get("/api/usage/summary", summary="Usage totals per user, model, plan, day or hour", responses=USAGE_ERRORS)
async def usage_summary(
    request: Request[Any, Any, Any],
    group_by: Annotated[str | None, Parameter(description="user (default), model, plan, day or hour")] = None,
    user_id: UserIdQuery = None,
    since: Since = None,
    until: Until = None,
    model: ModelQuery = None,
    status: StatusQuery = None,
    outcome: OutcomeQuery = None,
) -> UsageSummary:
    principal = await principal_of(request)
    require_someone(principal)
    grouping = parse_group_by(group_by)
    filters = usage_filter(since, until, model, status, outcome)
    groups = await container_of(request).usage_reports().summary(principal, user_id, filters, grouping)
    return {"group_by": grouping.value, "groups": [summary_view(group, grouping) for group in groups]}


# -- the CSV export -----------------------------------------------------------------------------------


def _csv_timestamp(moment: datetime) -> str:
    # As in the JSON rows: ISO 8601 in UTC with a Z.
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def csv_lines(records: Iterable[UsageRecord], header: bool = False) -> bytes:
    """Rows as RFC 4180 CSV (CRLF line ends; a field with a comma, a quote or a line break is quoted,
    its quotes doubled; None is an empty field), UTF-8."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header:
        writer.writerow(USAGE_FIELDS)
    # USAGE_FIELDS order, written out rather than through usage_values: an export writes millions.
    writer.writerows(
        (
            r.id,
            _csv_timestamp(r.timestamp),
            r.user,
            r.tier.value,
            r.key_id,
            r.client_ip,
            r.endpoint,
            r.model,
            r.status,
            r.outcome.value,
            r.latency_ms,
            r.prompt_tokens,
            r.completion_tokens,
            r.plan,
            r.queue_ms,
            r.request_id,
        )
        for r in records
    )
    return buffer.getvalue().encode()


async def csv_body(
    first: list[UsageRecord] | None, rest: AsyncGenerator[list[UsageRecord], None]
) -> AsyncGenerator[bytes, None]:
    """The header line and `first`, then each chunk of `rest` as it comes: one chunk in memory at a time."""
    try:
        yield csv_lines(first or (), header=True)
        if first is None:
            return
        async for chunk in rest:
            yield csv_lines(chunk)
    finally:
        # The client left, or the rows ended: the store's cursor and connection go back at once.
        await rest.aclose()


@get(
    "/api/usage/export",
    summary="Usage rows as CSV, oldest first, streamed",
    media_type=CSV_MEDIA_TYPE,
    responses=answer(str, media_type=CSV_MEDIA_TYPE, description="A header line, then one line per row")
    | USAGE_ERRORS,
)
async def export_usage(
    request: Request[Any, Any, Any],
    user_id: UserIdQuery = None,
    since: Since = None,
    until: Until = None,
    model: ModelQuery = None,
    status: StatusQuery = None,
    outcome: OutcomeQuery = None,
) -> Stream:
    principal = await principal_of(request)
    require_someone(principal)
    filters: UsageFilter = usage_filter(since, until, model, status, outcome)
    chunks = container_of(request).usage_reports().export(principal, user_id, filters, EXPORT_CHUNK_ROWS)
    # The first chunk before the status line: a database that is down is a 503, not a cut-off 200.
    first = await anext(chunks, None)
    return Stream(
        csv_body(first, chunks),
        media_type=CSV_MEDIA_TYPE,
        headers={"Content-Disposition": 'attachment; filename="usage.csv"'},
    )
