"""The usage rollups in SQL (see domain/usage_rollups.py): added to in the rows' own transaction, read
by the console's charts when their range falls on whole minutes (or hours, for the top users)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ollama_gate.adapters.sql.tables import usage_minutes, usage_user_hours, usage_user_minutes
from ollama_gate.domain.access import UsageScope
from ollama_gate.domain.usage_rollups import Rollups
from ollama_gate.domain.usage_series import BucketCount, UserTotals


def _upsert_sql(table: Table, counted: tuple[str, ...], placeholder: Callable[[int], str]) -> str:
    """INSERT ... ON CONFLICT (the key) DO UPDATE SET each count = count + the new one, as driver SQL
    (tuples, not SQLAlchemy's per-row dicts: a batch of many users' rows costs half as much CPU)."""
    names = [column.name for column in table.columns]
    key = [column.name for column in table.primary_key.columns]
    quoted = ", ".join(f'"{name}"' for name in names)
    values = ", ".join(placeholder(n) for n in range(1, len(names) + 1))
    updates = ", ".join(f'"{name}" = {table.name}."{name}" + excluded."{name}"' for name in counted)
    conflict = ", ".join(f'"{name}"' for name in key)
    return (
        f"INSERT INTO {table.name} ({quoted}) VALUES ({values}) "  # noqa: S608 - the tables' own names
        f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
    )


_COUNTS = ("requests", "tokens")
_TABLES = ((usage_minutes, _COUNTS), (usage_user_minutes, _COUNTS), (usage_user_hours, (*_COUNTS, "errors")))
_SQLITE_UPSERTS = tuple(_upsert_sql(table, counted, lambda _: "?") for table, counted in _TABLES)
_POSTGRES_UPSERTS = tuple(_upsert_sql(table, counted, lambda n: f"${n}") for table, counted in _TABLES)


def _rows(rollups: Rollups) -> tuple[list[tuple[Any, ...]], ...]:
    """Each table's rows, in its columns' order."""
    return (
        [(minute, c.requests, c.tokens) for minute, c in rollups.minutes.items()],
        [
            (user, tier, minute, c.requests, c.tokens)
            for (user, tier, minute), c in rollups.user_minutes.items()
        ],
        [
            (hour, user, tier, c.requests, c.tokens, c.errors)
            for (hour, user, tier), c in rollups.user_hours.items()
        ],
    )


async def add_rollups(connection: AsyncConnection, rollups: Rollups, sqlite: bool) -> None:
    """What a batch adds to each rollup, in the caller's transaction (the rows' own)."""
    if not rollups.minutes:
        return
    if sqlite:
        for statement, rows in zip(_SQLITE_UPSERTS, _rows(rollups), strict=True):
            await connection.exec_driver_sql(statement, rows)  # one executemany
        return
    raw = await connection.get_raw_connection()
    executemany = raw.driver_connection.executemany  # type: ignore[union-attr]
    for statement, rows in zip(_POSTGRES_UPSERTS, _rows(rollups), strict=True):
        await executemany(statement, rows)


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
