"""The console's chart buckets and top users on both SQL back ends, held to the in-memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from ollama_gate.adapters.memory_stores import InMemoryUsageStore
from ollama_gate.adapters.sql.database import Database
from ollama_gate.adapters.sql.stores import SqlUsageStore
from ollama_gate.domain.access import UsageScope
from ollama_gate.domain.identity import Tier
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
