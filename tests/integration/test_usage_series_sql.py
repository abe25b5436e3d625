"""The console's chart buckets and top users on both SQL back ends, held to the in-memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from ollama_gate.adapters.memory_stores import InMemoryUsageStore
from ollama_gate.adapters.sql import migrate
from ollama_gate.adapters.sql.database import Database
from ollama_gate.adapters.sql.stores import SqlUsageStore
from ollama_gate.adapters.sql.tables import usage_logs
from ollama_gate.domain.access import UsageScope
from ollama_gate.domain.identity import Tier
from ollama_gate.domain.usage import UsageRecord
from ollama_gate.ports.stores import UsageSeriesStore
from tests.integration.test_usage_queries_sql import START, varied_rows

ROWS = varied_rows(300, seed=11)


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[tuple[SqlUsageStore, InMemoryUsageStore]]:
    database = Database(database_url)
    sql, memory = SqlUsageStore(database), InMemoryUsageStore()
    both: list[UsageSeriesStore] = [sql, memory]  # what the console's charts take (checked by mypy)
    try:
        await sql.add_many(ROWS)
        await memory.add_many(ROWS)
        assert len(both) == 2
        yield sql, memory
    finally:
        await database.close()


@pytest.mark.parametrize("bucket_seconds", [60, 300, 3600, 45])
@pytest.mark.parametrize("scope", [None, UsageScope("alice", Tier.MEMBER)], ids=["everyone", "alice"])
async def test_buckets_are_the_reference_counts(
    stores: tuple[SqlUsageStore, InMemoryUsageStore], bucket_seconds: int, scope: UsageScope | None
) -> None:
    sql, memory = stores
    since, until = START + timedelta(hours=2, seconds=17), START + timedelta(hours=20)
    expected = await memory.buckets(scope, since, until, bucket_seconds)
    found = sorted(await sql.buckets(scope, since, until, bucket_seconds), key=lambda b: b.bucket)
    assert found == expected and sum(b.requests for b in found) > 10


async def test_top_users_are_the_reference_ranking(stores: tuple[SqlUsageStore, InMemoryUsageStore]) -> None:
    sql, memory = stores
    since, until = START, START + timedelta(days=3)
    for limit in (1, 2, 10):
        assert await sql.top_users(since, until, limit) == await memory.top_users(since, until, limit)
    assert await sql.top_users(START - timedelta(days=2), START - timedelta(days=1), 10) == []


# Whole minutes and hours: the rollups answer (see domain/usage_rollups.py).
@pytest.mark.parametrize("bucket_seconds", [60, 300, 3600])
@pytest.mark.parametrize(
    "scope",
    [None, UsageScope("alice", Tier.MEMBER), UsageScope("anonymous", Tier.ANONYMOUS)],
    ids=["everyone", "alice", "anonymous"],
)
async def test_buckets_over_whole_minutes_come_from_the_rollups_and_are_the_reference_counts(
    stores: tuple[SqlUsageStore, InMemoryUsageStore], bucket_seconds: int, scope: UsageScope | None
) -> None:
    sql, memory = stores
    since, until = START + timedelta(hours=2), START + timedelta(hours=20, minutes=5)
    expected = await memory.buckets(scope, since, until, bucket_seconds)
    assert await sql.buckets(scope, since, until, bucket_seconds) == expected
    assert sum(b.requests for b in expected) > 10


async def test_top_users_over_whole_hours_come_from_the_rollups(
    stores: tuple[SqlUsageStore, InMemoryUsageStore],
) -> None:
    sql, memory = stores
    since = START.replace(minute=0)  # whole hours
    for until in (since + timedelta(hours=5), since + timedelta(days=3)):
        for limit in (1, 3, 10):
            assert await sql.top_users(since, until, limit) == await memory.top_users(since, until, limit)


async def test_rows_of_one_minute_written_in_several_batches_add_up(database_url: str) -> None:
    """Late rows (another instance's, or a long request's) land in their minute: counts are added."""
    database = Database(database_url)
    sql, memory = SqlUsageStore(database), InMemoryUsageStore()
    try:
        for batch in (ROWS[:100], ROWS[50:150], ROWS[:10]):
            await sql.add_many(batch)
            await memory.add_many(batch)
        since, until = START, START + timedelta(days=2)
        assert await sql.buckets(None, since, until, 60) == await memory.buckets(None, since, until, 60)
        hours = START.replace(minute=0)
        assert await sql.top_users(hours, until, 5) == await memory.top_users(hours, until, 5)
    finally:
        await database.close()


async def test_rows_stored_before_the_rollups_existed_are_counted_by_the_migration(database_url: str) -> None:
    database = Database(database_url)
    memory = InMemoryUsageStore()
    try:
        async with database.engine.connect() as connection:
            await connection.run_sync(migrate.upgrade, database.sqlite_path, "0004")
        async with database.engine.begin() as connection:
            await connection.execute(usage_logs.insert(), [_as_row(r) for r in ROWS])
        await memory.add_many(ROWS)
        assert await database.upgrade() == migrate.head_revision()
        sql = SqlUsageStore(database)
        since, until = START, START + timedelta(days=2)
        assert await sql.buckets(None, since, until, 300) == await memory.buckets(None, since, until, 300)
        alice = UsageScope("alice", Tier.MEMBER)
        assert await sql.buckets(alice, since, until, 60) == await memory.buckets(alice, since, until, 60)
        hours = START.replace(minute=0)
        assert await sql.top_users(hours, until, 10) == await memory.top_users(hours, until, 10)
    finally:
        await database.close()


def _as_row(record: UsageRecord) -> dict[str, object]:
    """A usage row as the table takes it, written without the store (so without its rollups)."""
    values = {field: getattr(record, field) for field in ("timestamp", "user", "key_id", "client_ip")}
    values |= {"endpoint": record.endpoint, "model": record.model, "status": record.status}
    values |= {"tier": record.tier.value, "outcome": record.outcome.value, "latency_ms": record.latency_ms}
    values |= {"prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens}
    return values | {"plan": record.plan, "queue_ms": record.queue_ms, "request_id": record.request_id}
