"""Which usage rows a query reads (filters and the page cursor) and the totals the summary reports.

Everything a caller can put in a query string is checked here, before it reaches a store: a bad value is
`InvalidRequest` (400) with a sentence saying what is expected, never a database error. Integers are
bounded to what a 64-bit column holds.

`summarize` is the reference the stores are held to: the SQL stores compute the same groups in SQL, the
in-memory store calls it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum

from ollama_gate.domain.access import UsageScope
from ollama_gate.domain.errors import InvalidRequest
from ollama_gate.domain.immutable import immutable
from ollama_gate.domain.usage import Outcome, UsageRecord

MAX_ROW_ID = 2**63 - 1  # the largest id a BIGINT (and SQLite's INTEGER) holds
MAX_MODEL_LENGTH = 256  # the usage_logs.model column
PERCENTILES = (0.5, 0.95)
_DECIMALS = 3  # latencies and queue times are recorded to the microsecond


class GroupBy(StrEnum):
    USER = "user"
    MODEL = "model"
    PLAN = "plan"
    DAY = "day"  # YYYY-MM-DD, UTC
    HOUR = "hour"  # YYYY-MM-DDTHH:00Z

    @property
    def is_time(self) -> bool:
        return self in (GroupBy.DAY, GroupBy.HOUR)


@immutable
class UsageFilter:
    """What narrows the rows beyond whose they are (that is the `UsageScope`).

    `since` is inclusive and `until` exclusive, both UTC; `before_id` keeps rows with a smaller id only
    (the page cursor of `/api/usage`, which lists newest first).
    """

    since: datetime | None = None
    until: datetime | None = None
    model: str | None = None
    status: int | None = None
    outcome: Outcome | None = None
    before_id: int | None = None

    def admits(self, record: UsageRecord) -> bool:
        return (
            (self.since is None or record.timestamp >= self.since)
            and (self.until is None or record.timestamp < self.until)
            and (self.model is None or record.model == self.model)
            and (self.status is None or record.status == self.status)
            and (self.outcome is None or record.outcome is self.outcome)
            and (self.before_id is None or (record.id is not None and record.id < self.before_id))
        )


ALL_ROWS = UsageFilter()


def in_scope(record: UsageRecord, scope: UsageScope | None) -> bool:
    return scope is None or (record.user == scope.user and record.tier is scope.tier)


@immutable
class UsageGroup:
    """The totals of one group of rows. `key` is the user, model, plan (None for rows without one), day
    or hour the rows share. Latency percentiles interpolate linearly between the closest ranks (SQL's
    `percentile_cont`); the mean queue time counts only the rows that waited in the gateway's queue
    (None when none did)."""

    key: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int
    cancelled: int
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    mean_queue_ms: float | None


# -- keys of the time groups -------------------------------------------------------------------------


def day_key(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def hour_key(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:00Z")


def group_key(record: UsageRecord, group_by: GroupBy) -> str | None:
    if group_by is GroupBy.USER:
        return record.user
    if group_by is GroupBy.MODEL:
        return record.model
    if group_by is GroupBy.PLAN:
        return record.plan
    if group_by is GroupBy.DAY:
        return day_key(record.timestamp)
    return hour_key(record.timestamp)


# -- the arithmetic ----------------------------------------------------------------------------------


def percentile_ranks(count: int, fraction: float) -> tuple[int, float]:
    """Where SQL's percentile_cont looks among `count` values sorted ascending: the 0-based rank at or
    below (n - 1) x fraction, and the weight of the value at the next rank."""
    position = (count - 1) * fraction
    low = math.floor(position)
    return low, position - low


def interpolate(low_value: float, high_value: float | None, weight: float) -> float:
    """The value between two neighbouring ranks (the one above is not needed when the weight is 0), as
    PostgreSQL computes it: equal neighbours give exactly their value."""
    if weight == 0 or high_value is None:
        return low_value
    return low_value + (high_value - low_value) * weight


def percentile_cont(ordered: list[float], fraction: float) -> float | None:
    """SQL's percentile_cont over values sorted ascending: the value at rank (n - 1) x fraction, linearly
    interpolated between its two neighbours. None for no values."""
    if not ordered:
        return None
    low, weight = percentile_ranks(len(ordered), fraction)
    return interpolate(ordered[low], ordered[low + 1] if low + 1 < len(ordered) else None, weight)


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, _DECIMALS)


def ordered_groups(groups: Iterable[UsageGroup], group_by: GroupBy) -> list[UsageGroup]:
    """Days and hours in time order; users, models and plans busiest first (then by name, None last)."""
    if group_by.is_time:
        return sorted(groups, key=lambda g: g.key or "")
    return sorted(groups, key=lambda g: (-g.requests, g.key is None, g.key or ""))


def summarize(records: Iterable[UsageRecord], group_by: GroupBy) -> list[UsageGroup]:
    """The summary of `records` (already filtered), as every store must answer it."""
    grouped: dict[str | None, list[UsageRecord]] = {}
    for record in records:
        grouped.setdefault(group_key(record, group_by), []).append(record)
    groups = []
    for key, rows in grouped.items():
        latencies = sorted(r.latency_ms for r in rows)
        queued = [r.queue_ms for r in rows if r.queue_ms is not None]
        p50, p95 = (percentile_cont(latencies, fraction) for fraction in PERCENTILES)
        groups.append(
            UsageGroup(
                key=key,
                requests=len(rows),
                prompt_tokens=sum(r.prompt_tokens or 0 for r in rows),
                completion_tokens=sum(r.completion_tokens or 0 for r in rows),
                errors=sum(1 for r in rows if r.outcome is Outcome.UPSTREAM_ERROR),
                cancelled=sum(1 for r in rows if r.outcome is Outcome.CANCELLED),
                p50_latency_ms=rounded(p50),
                p95_latency_ms=rounded(p95),
                mean_queue_ms=rounded(sum(queued) / len(queued)) if queued else None,
            )
        )
    return ordered_groups(groups, group_by)


# -- what a query string may say -----------------------------------------------------------------------


def parse_instant(text: str, name: str) -> datetime:
    """An ISO 8601 date or date-time (`2026-11-25`, `2026-11-25T12:00:00Z`, `...+02:00`); without an
    offset it is UTC. Returned in UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidRequest(
            f"{name} must be an ISO 8601 date or date-time such as 2026-11-25 or 2026-11-25T12:00:00Z"
        ) from None


def _bounded_integer(text: str, name: str, low: int, high: int) -> int:
    text = text.strip()
    # Digits only, and few enough of them: int() would accept '1_000', ' +5' and a million digits.
    if not text.isascii() or not text.isdigit() or len(text) > len(str(high)) or not low <= int(text) <= high:
        raise InvalidRequest(f"{name} must be an integer between {low} and {high}")
    return int(text)


def parse_status(text: str) -> int:
    return _bounded_integer(text, "status", 100, 599)


def parse_cursor(text: str) -> int:
    """The `cursor` of `/api/usage`: what a previous page gave as `next_cursor`."""
    try:
        return _bounded_integer(text, "cursor", 1, MAX_ROW_ID)
    except InvalidRequest:
        raise InvalidRequest("cursor must be a next_cursor value from a previous page") from None


def parse_outcome(text: str) -> Outcome:
    try:
        return Outcome(text.strip())
    except ValueError:
        names = ", ".join(outcome.value for outcome in Outcome)
        raise InvalidRequest(f"outcome must be one of {names}") from None


def parse_model(text: str) -> str:
    if not text or len(text) > MAX_MODEL_LENGTH:
        raise InvalidRequest(f"model must be 1 to {MAX_MODEL_LENGTH} characters")
    return text


def parse_group_by(text: str | None) -> GroupBy:
    if text is None:
        return GroupBy.USER
    try:
        return GroupBy(text.strip())
    except ValueError:
        names = ", ".join(group.value for group in GroupBy)
        raise InvalidRequest(f"group_by must be one of {names}") from None


def usage_filter(
    since: str | None = None,
    until: str | None = None,
    model: str | None = None,
    status: str | None = None,
    outcome: str | None = None,
    cursor: str | None = None,
) -> UsageFilter:
    """The filter a query string's values make (None: not given); raises InvalidRequest."""
    start = parse_instant(since, "since") if since is not None else None
    end = parse_instant(until, "until") if until is not None else None
    if start is not None and end is not None and start > end:
        raise InvalidRequest("since must not be later than until")
    return UsageFilter(
        since=start,
        until=end,
        model=parse_model(model) if model is not None else None,
        status=parse_status(status) if status is not None else None,
        outcome=parse_outcome(outcome) if outcome is not None else None,
        before_id=parse_cursor(cursor) if cursor is not None else None,
    )
