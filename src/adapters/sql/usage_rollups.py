"""The usage rollups in SQL (see domain/usage_rollups.py): added to in the rows' own transaction, read
by the console's charts when their range falls on whole minutes (or hours, for the top users)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from ollama_gate.adapters.sql.tables import usage_minutes, usage_user_hours, usage_user_minutes
from ollama_gate.domain.access import UsageScope
from ollama_gate.domain.usage_rollups import Rollups
from ollama_gate.domain.usage_series import BucketCount, UserTotals


def _upsert(table: Table, sqlite: bool, counted: tuple[str, ...]) -> Any:
    """INSERT ... ON CONFLICT (the key) DO UPDATE SET each count = count + the new one."""
    insert = (sqlite_insert if sqlite else postgres_insert)(table)
    return insert.on_conflict_do_update(
        index_elements=[column.name for column in table.primary_key.columns],
        set_={name: table.c[name] + insert.excluded[name] for name in counted},
    )


_COUNTS = ("requests", "tokens")
_UPSERTS = {
    sqlite: (
        _upsert(usage_minutes, sqlite, _COUNTS),
        _upsert(usage_user_minutes, sqlite, _COUNTS),
        _upsert(usage_user_hours, sqlite, (*_COUNTS, "errors")),
    )
    for sqlite in (True, False)
}


async def add_rollups(connection: AsyncConnection, rollups: Rollups, sqlite: bool) -> None:
    minutes, user_minutes, user_hours = _UPSERTS[sqlite]
    await connection.execute(
        minutes,
        [{"minute": m, "requests": c.requests, "tokens": c.tokens} for m, c in rollups.minutes.items()],
    )
    await connection.execute(
        user_minutes,
        [
            {"user": user, "tier": tier, "minute": m, "requests": c.requests, "tokens": c.tokens}
            for (user, tier, m), c in rollups.user_minutes.items()
        ],
    )
    await connection.execute(
        user_hours,
        [
            {
                "hour": h,
                "user": user,
                "tier": tier,
                "requests": c.requests,
                "tokens": c.tokens,
                "errors": c.errors,
            }
            for (h, user, tier), c in rollups.user_hours.items()
        ],
    )


async def minute_counts(
    connection: AsyncConnection, scope: UsageScope | None, first: int, end: int
) -> list[BucketCount]:
    """Requests and tokens per minute, minutes `first <= minute < end`, of everyone or of `scope`."""
    if scope is None:
        table = usage_minutes
        query = select(table.c.minute, table.c.requests, table.c.tokens).where(
            table.c.minute >= first, table.c.minute < end
        )
    else:
        table = usage_user_minutes
        query = select(table.c.minute, table.c.requests, table.c.tokens).where(
            table.c.user == scope.user,
            table.c.tier == scope.tier.value,
            table.c.minute >= first,
            table.c.minute < end,
        )
    rows = (await connection.execute(query.order_by(table.c.minute))).all()
    return [BucketCount(int(row.minute), int(row.requests), int(row.tokens)) for row in rows]


async def top_users_by_hour(
    connection: AsyncConnection, first: int, end: int, limit: int
) -> list[UserTotals]:
    """The `limit` users with the most requests in hours `first <= hour < end`, most first, then by name."""
    table = usage_user_hours
    requests = func.sum(table.c.requests).label("requests")
    query = (
        select(
            table.c.user,
            requests,
            func.sum(table.c.tokens).label("tokens"),
            func.sum(table.c.errors).label("errors"),
        )
        .where(table.c.hour >= first, table.c.hour < end)
        .group_by(table.c.user)
        .order_by(requests.desc(), table.c.user)
        .limit(limit)
    )
    rows = (await connection.execute(query)).all()
    return [UserTotals(str(r.user), int(r.requests), int(r.tokens), int(r.errors)) for r in rows]
