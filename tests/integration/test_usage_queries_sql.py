"""Usage filters, pages, summaries and exports on both SQL back ends, held to the in-memory store (which
computes them with the domain's reference `summarize`)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect
from sqlalchemy.pool import QueuePool

from ollama_gate.adapters.memory_stores import InMemoryUsageStore
from ollama_gate.adapters.sql.database import Database
from ollama_gate.adapters.sql.stores import SqlUsageStore
from ollama_gate.domain.access import UsageScope
from ollama_gate.domain.identity import Tier
from ollama_gate.domain.usage import Outcome, UsageRecord
from ollama_gate.domain.usage_query import GroupBy, UsageFilter, UsageGroup

START = datetime(2026, 11, 24, 22, 30, tzinfo=UTC)  # the rows span midnight and several hours
USERS = [("alice", Tier.MEMBER), ("bob", Tier.MEMBER), ("anonymous", Tier.ANONYMOUS), ("admin", Tier.ADMIN)]
MODELS = ["smollm:latest", "llama3.2:1b", None, 'we"ird, model\nname']
PLANS = ["member", "anonymous", None, "gold"]
OUTCOMES = [Outcome.OK] * 6 + [Outcome.UPSTREAM_ERROR, Outcome.CANCELLED]


def varied_rows(count: int, seed: int = 7) -> list[UsageRecord]:
    """Rows with every kind of value a summary meets: ties and spread in latency, missing tokens, models
    and plans, queue times for some, outcomes of all kinds, timestamps over two days."""
    rng = random.Random(seed)
    rows = []
    for n in range(count):
        user, tier = rng.choice(USERS)
        outcome = rng.choice(OUTCOMES)
        rows.append(
            UsageRecord(
                timestamp=START + timedelta(minutes=7 * n, microseconds=rng.randrange(1_000_000)),
                user=user,
                tier=tier,
                key_id=rng.choice([None, 1, 2]),
                client_ip="10.0.0.1",
                endpoint=rng.choice(["/chat", "/api/generate", "/v1/chat/completions"]),
                model=rng.choice(MODELS),
                status={Outcome.OK: 200, Outcome.UPSTREAM_ERROR: 502, Outcome.CANCELLED: 499}[outcome],
                outcome=outcome,
                latency_ms=rng.choice(
                    [5.0, 5.0, round(rng.uniform(1, 900), 3), round(rng.expovariate(0.01), 3)]
                ),
                prompt_tokens=rng.choice([None, rng.randrange(1, 50)]),
                completion_tokens=rng.choice([None, rng.randrange(1, 500)]),
                plan=rng.choice(PLANS),
                queue_ms=rng.choice([None, 0.0, round(rng.uniform(0, 50), 3)]),
                request_id=rng.choice([None, f"req-{n}", f'a,"b"\r\n{n}']),
            )
        )
    return rows


ROWS = varied_rows(400)


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[tuple[SqlUsageStore, InMemoryUsageStore, Database]]:
    """The same rows in a SQL store (each back end) and in the in-memory store, in the same order."""
    database = Database(database_url)
    sql, memory = SqlUsageStore(database), InMemoryUsageStore()
    try:
        for start in range(0, len(ROWS), 150):
            await sql.add_many(ROWS[start : start + 150])
            await memory.add_many(ROWS[start : start + 150])
        yield sql, memory, database
    finally:
        await database.close()


def assert_same_groups(found: list[UsageGroup], expected: list[UsageGroup]) -> None:
    """Equal, the percentiles and means within rounding (each back end rounds its own floats)."""
    assert [g.key for g in found] == [g.key for g in expected]
    for got, want in zip(found, expected, strict=True):
        exact = ("requests", "prompt_tokens", "completion_tokens", "errors", "cancelled")
        assert [getattr(got, name) for name in exact] == [getattr(want, name) for name in exact], got.key
        for name in ("p50_latency_ms", "p95_latency_ms", "mean_queue_ms"):
            value, reference = getattr(got, name), getattr(want, name)
            assert (value is None) == (reference is None), (got.key, name)
            if value is not None:
                assert value == pytest.approx(reference, abs=0.002), (got.key, name)


SCOPES = {
    "everyone": None,
    "alice": UsageScope("alice", Tier.MEMBER),
    "anonymous": UsageScope("anonymous", Tier.ANONYMOUS),
    "nobody": UsageScope("anonymous", Tier.MEMBER),  # a member called like the anonymous callers
}
FILTERS = {
    "all": UsageFilter(),
    "a day": UsageFilter(since=datetime(2026, 11, 25, tzinfo=UTC), until=datetime(2026, 11, 26, tzinfo=UTC)),
    "since": UsageFilter(since=START + timedelta(hours=10)),
    "until": UsageFilter(until=START + timedelta(hours=3)),
    "model": UsageFilter(model="llama3.2:1b"),
    "awkward model": UsageFilter(model='we"ird, model\nname'),
    "status": UsageFilter(status=502),
    "outcome": UsageFilter(outcome=Outcome.CANCELLED),
    "empty range": UsageFilter(since=START - timedelta(days=2), until=START - timedelta(days=1)),
}


@pytest.mark.parametrize("group_by", list(GroupBy), ids=[g.value for g in GroupBy])
async def test_the_summary_per_group_is_the_reference_summary(
    stores: tuple[SqlUsageStore, InMemoryUsageStore, Database], group_by: GroupBy
) -> None:
    sql, memory, _ = stores
    for scope in SCOPES.values():
        for filters in FILTERS.values():
            expected = await memory.summary(scope, filters, group_by)
            assert_same_groups(await sql.summary(scope, filters, group_by), expected)


async def test_summary_keys_and_totals_add_up(
    stores: tuple[SqlUsageStore, InMemoryUsageStore, Database],
) -> None:
    sql, _, _ = stores
    days = await sql.summary(None, UsageFilter(), GroupBy.DAY)
    hours = await sql.summary(None, UsageFilter(), GroupBy.HOUR)
    models = await sql.summary(None, UsageFilter(), GroupBy.MODEL)

    assert [g.key for g in days] == ["2026-11-24", "2026-11-25", "2026-11-26"]
    assert hours[0].key == "2026-11-24T22:00Z" and hours[1].key == "2026-11-24T23:00Z"
    assert hours[2].key == "2026-11-25T00:00Z"
    for groups in (days, hours, models):
        assert sum(g.requests for g in groups) == len(ROWS)
        assert sum(g.errors for g in groups) == sum(r.outcome is Outcome.UPSTREAM_ERROR for r in ROWS)
        assert sum(g.completion_tokens for g in groups) == sum(r.completion_tokens or 0 for r in ROWS)
    assert None in [g.key for g in models]  # rows without a model are a group of their own
    assert [g.requests for g in models] == sorted((g.requests for g in models), reverse=True)


async def test_one_row_and_a_constant_group_have_that_latency_as_every_percentile(database_url: str) -> None:
    database = Database(database_url)
    only = ROWS[0]
    constant = dataclasses.replace(ROWS[1], user="carol", tier=Tier.MEMBER, latency_ms=42.0)
    try:
        store = SqlUsageStore(database)
        await store.add_many([only, constant, constant, constant])
        (carol,) = await store.summary(UsageScope("carol", Tier.MEMBER), UsageFilter(), GroupBy.USER)
        (first,) = await store.summary(UsageScope(only.user, only.tier), UsageFilter(), GroupBy.USER)
    finally:
        await database.close()

    assert (carol.requests, carol.p50_latency_ms, carol.p95_latency_ms) == (3, 42.0, 42.0)
    assert first.requests == 1 and first.p50_latency_ms == first.p95_latency_ms == only.latency_ms


async def test_filtered_pages_walk_every_row_once_newest_first(
    stores: tuple[SqlUsageStore, InMemoryUsageStore, Database],
) -> None:
    sql, memory, _ = stores
    for scope in SCOPES.values():
        for filters in FILTERS.values():
            expected = await memory.recent(1000, scope, filters)
            assert [r.id for r in await sql.recent(1000, scope, filters)] == [r.id for r in expected]
    # Page by page with the cursor (each page's last id), as /api/usage does.
    seen: list[int] = []
    cursor: int | None = None
    while True:
        page = await sql.recent(37, None, UsageFilter(model="smollm:latest", before_id=cursor))
        if not page:
            break
        seen += [r.id for r in page if r.id is not None]
        cursor = page[-1].id
    assert seen == [r.id for r in await memory.recent(1000, None, UsageFilter(model="smollm:latest"))]


async def test_the_export_is_every_row_oldest_first_in_chunks(
    stores: tuple[SqlUsageStore, InMemoryUsageStore, Database],
) -> None:
    sql, memory, _ = stores

    chunks = [chunk async for chunk in sql.export(None, UsageFilter(), chunk_size=64)]
    mine = [r async for chunk in sql.export(SCOPES["alice"], FILTERS["a day"], chunk_size=10) for r in chunk]

    assert [len(chunk) for chunk in chunks] == [64] * 6 + [16]
    assert [r for chunk in chunks for r in chunk] == memory.rows  # every field, the awkward ones too
    expected = [r async for chunk in memory.export(SCOPES["alice"], FILTERS["a day"]) for r in chunk]
    assert mine == expected and mine


async def test_an_export_left_early_gives_its_connection_back(
    stores: tuple[SqlUsageStore, InMemoryUsageStore, Database],
) -> None:
    sql, _, database = stores
    pool = database.engine.pool
    assert isinstance(pool, QueuePool)
    for _ in range(pool.size() + 3):  # more exports than the pool has connections
        export = sql.export(None, UsageFilter(), chunk_size=10)
        first = await anext(export)
        assert len(first) == 10
        await export.aclose()
    assert pool.checkedout() == 0
    assert len(await sql.recent(5, None)) == 5


async def test_the_timestamp_index_exists_after_migrating(
    stores: tuple[SqlUsageStore, InMemoryUsageStore, Database],
) -> None:
    _, _, database = stores
    async with database.engine.connect() as connection:
        indexes = await connection.run_sync(lambda sync: inspect(sync).get_indexes("usage_logs"))
    assert {"name": "ix_usage_logs_timestamp", "column_names": ["timestamp"]}.items() <= next(
        index for index in indexes if index["name"] == "ix_usage_logs_timestamp"
    ).items()


async def test_a_model_name_longer_than_its_column_does_not_lose_the_batch(database_url: str) -> None:
    """A client names any model it likes; PostgreSQL refuses a value longer than the column, which
    used to fail the writer's whole batch, other callers' rows with it."""
    database = Database(database_url)
    try:
        store = SqlUsageStore(database)
        await store.add_many([ROWS[0], dataclasses.replace(ROWS[1], model="m" * 5000), ROWS[2]])
        stored = await store.recent(10, None)
    finally:
        await database.close()

    assert len(stored) == 3
    assert stored[1].model == "m" * 256
