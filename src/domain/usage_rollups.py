"""Usage rows counted per minute and per user-hour as they are written, so charts never scan the rows.

A million rows in a day would make the console's day chart and its top users read a million rows per
view (1.5 s on SQLite). Counted as they are written — per minute for everyone, per minute for each
user, per hour for each user — a day chart reads 1,440 counts, a member's chart its own 1,440 at most,
and the top users 24 hours x the users active in them. The counts are added (an upsert), so rows written
late or by another instance land in their minute as well: the counts are the rows, exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from ollama_gate.domain.usage import Outcome, UsageRecord

K = TypeVar("K")
MINUTE = 60
HOUR = 3600


@dataclass(slots=True)
class Counts:
    requests: int = 0
    tokens: int = 0
    errors: int = 0


# Keys: a minute (seconds since the epoch // 60); (user, tier, minute); (hour, user, tier).
@dataclass(slots=True)
class Rollups:
    """What a batch of rows adds to each rollup, keyed in the order the tables' primary keys are."""

    minutes: dict[int, Counts]
    user_minutes: dict[tuple[str, str, int], Counts]
    user_hours: dict[tuple[int, str, str], Counts]


def rollups(records: Iterable[UsageRecord]) -> Rollups:
    minutes: dict[int, Counts] = {}
    user_minutes: dict[tuple[str, str, int], Counts] = {}
    user_hours: dict[tuple[int, str, str], Counts] = {}
    for record in records:
        second = math.floor(record.timestamp.timestamp())
        minute, tier, user = second // MINUTE, record.tier.value, record.user
        tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
        _count(minutes, minute, tokens)
        _count(user_minutes, (user, tier, minute), tokens)
        hourly = _count(user_hours, (second // HOUR, user, tier), tokens)
        hourly.errors += record.outcome is Outcome.UPSTREAM_ERROR
    # Sorted: concurrent writers then take the rows' locks in one order (no deadlock on PostgreSQL).
    return Rollups(
        dict(sorted(minutes.items())), dict(sorted(user_minutes.items())), dict(sorted(user_hours.items()))
    )


def _count(table: dict[K, Counts], key: K, tokens: int) -> Counts:
    """One more row of `tokens` in `key`'s counts (made at its first row)."""
    counts = table.get(key)
    if counts is None:
        counts = table[key] = Counts()
    counts.requests += 1
    counts.tokens += tokens
    return counts


def aligned(seconds: float, unit: int) -> bool:
    """Whether a range bound falls on a whole `unit` (a rollup then answers for the range exactly)."""
    return seconds % unit == 0
