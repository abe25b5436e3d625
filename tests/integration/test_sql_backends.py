"""The SQL stores and migrations on both back ends: SQLite (always) and PostgreSQL (when configured)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import MetaData, Table, create_engine, event, insert, select

from ollama_gate.adapters.sql import migrate
from ollama_gate.adapters.sql.database import Database
from ollama_gate.adapters.sql.stores import SqlKeyStore, SqlUsageStore
from ollama_gate.adapters.sql.tables import api_keys, usage_logs
from ollama_gate.domain.access import UsageScope
from ollama_gate.domain.errors import StoreUnavailable
from ollama_gate.domain.identity import Tier
from ollama_gate.domain.usage import Outcome, UsageRecord
from ollama_gate.domain.usage_query import MAX_MODEL_LENGTH
from tests.support.fake_ollama import free_port

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def usage(user: str, status: int = 200, tokens: int | None = 5) -> UsageRecord:
    return UsageRecord(
        timestamp=NOW,
        user=user,
        tier=Tier.MEMBER if user != "anonymous" else Tier.ANONYMOUS,
        key_id=None,
        client_ip="127.0.0.1",
        endpoint="/chat",
        model="smollm:latest",
        status=status,
        outcome=Outcome.OK if status == 200 else Outcome.UPSTREAM_ERROR,
        latency_ms=1.5,
        prompt_tokens=tokens,
        completion_tokens=tokens,
    )


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A connection to an empty database on each back end, closed after the test."""
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.close()


async def test_migrations_bring_an_empty_database_to_head(database: Database, database_url: str) -> None:
    assert await database.current_revision() is None
    assert await database.upgrade() == migrate.head_revision()
    # Idempotent: a second instance starting later finds nothing to do.
    assert await Database(database_url).upgrade() == migrate.head_revision()


async def test_key_store_round_trip(database: Database) -> None:
    store = SqlKeyStore(database)
    first = await store.add("alice", "laptop", "a" * 64, "oa-aaaaaa", NOW)
    second = await store.add("alice", "phone", "b" * 64, "oa-bbbbbb", NOW + timedelta(seconds=1))
    await store.add("bob", "default", "c" * 64, "oa-cccccc", NOW)

    found = await store.find_by_hash("b" * 64)
    assert found == second and found.created_at == NOW + timedelta(seconds=1)
    assert found.created_at.tzinfo is not None
    assert await store.find_by_hash("d" * 64) is None
    # Many at once, in one call: the known ones by hash, revoked or not; an unknown hash is absent.
    assert await store.find_by_hashes(["b" * 64, "d" * 64, "a" * 64]) == {"a" * 64: first, "b" * 64: second}
    assert await store.find_by_hashes([]) == {}
    assert [k.id for k in await store.list("alice")] == [second.id, first.id]
    assert len(await store.list(None)) == 3

    revoked = await store.revoke(first.id, NOW + timedelta(minutes=1))
    again = await store.revoke(first.id, NOW + timedelta(minutes=2))
    assert revoked is not None and again is not None
    assert revoked.revoked_at == again.revoked_at == NOW + timedelta(minutes=1)
    assert await store.revoke(999, NOW) is None

    await store.touch({second.id: NOW + timedelta(hours=1)})
    touched = await store.get(second.id)
    assert touched is not None and touched.last_used_at == NOW + timedelta(hours=1)


async def test_instances_touching_the_same_keys_in_opposite_orders_do_not_deadlock(
    database: Database, database_url: str
) -> None:
    await database.upgrade()
    store = SqlKeyStore(database)
    ids = [(await store.add("alice", f"k{n}", f"{n:064x}", f"oa-{n:06x}", NOW)).id for n in range(60)]
    other = Database(database_url)  # a second instance, its own connections
    try:
        for round_ in range(5):
            at = NOW + timedelta(minutes=round_)
            forwards = {key_id: at for key_id in ids}
            backwards = {key_id: at for key_id in reversed(ids)}
            await asyncio.gather(store.touch(forwards), SqlKeyStore(other).touch(backwards))
    finally:
        await other.close()
    touched = await store.get(ids[0])
    assert touched is not None and touched.last_used_at == NOW + timedelta(minutes=4)


async def test_usage_store_writes_batches_and_reads_newest_first(database: Database) -> None:
    store = SqlUsageStore(database)
    await store.add_many([usage("alice"), usage("bob", 502, None), usage("alice", tokens=9)])
    await store.add_many([usage("anonymous")])
    assert await store.count() == 4
    alice = await store.recent(10, UsageScope("alice", Tier.MEMBER))
    assert [r.prompt_tokens for r in alice] == [9, 5]
    newest = await store.recent(2, None)
    assert [r.user for r in newest] == ["anonymous", "alice"]
    bob = (await store.recent(10, UsageScope("bob", Tier.MEMBER)))[0]
    # Scoped by tier too: the anonymous callers' rows are not a member's called "anonymous".
    assert await store.recent(10, UsageScope("anonymous", Tier.MEMBER)) == []
    assert [r.tier for r in await store.recent(10, UsageScope("anonymous", Tier.ANONYMOUS))] == [
        Tier.ANONYMOUS
    ]
    assert (bob.status, bob.outcome, bob.prompt_tokens, bob.timestamp) == (
        502,
        Outcome.UPSTREAM_ERROR,
        None,
        NOW,
    )


async def test_unreachable_database_is_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for url in (
        f"sqlite+aiosqlite:///{blocker}/gate.db",
        f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing",
    ):
        database = Database(url, connect_timeout=1)
        try:
            with pytest.raises(StoreUnavailable):
                await SqlKeyStore(database).find_by_hash("a" * 64)
            assert await database.try_ensure_schema() is False
        finally:
            await database.close()


def test_a_database_from_before_migrations_is_adopted_without_loss(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    # How the first gateway version created its schema: its two tables as they were then.
    old = MetaData()
    later = {"plan", "queue_ms", "request_id"}  # columns added by later revisions
    old_keys = Table("api_keys", old, *[c._copy() for c in api_keys.columns if c.name not in later])
    old_usage = Table("usage_logs", old, *[c._copy() for c in usage_logs.columns if c.name not in later])
    old.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            insert(old_keys).values(
                user_id="alice", name="old", key_hash="e" * 64, prefix="oa-eeeeee", created_at=NOW
            )
        )
        connection.execute(
            insert(old_usage).values(
                timestamp=NOW,
                user="alice",
                tier="member",
                key_id=1,
                client_ip="127.0.0.1",
                endpoint="/chat",
                model="m",
                status=200,
                outcome="ok",
                latency_ms=1.0,
                prompt_tokens=1,
                completion_tokens=2,
            )
        )
    engine.dispose()

    result = subprocess.run(
        [sys.executable, "-m", "ollama_gate", "db", "upgrade"],
        env={"OLLAMA_GATE_DATABASE_URL": f"sqlite+aiosqlite:///{path}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"database at revision {migrate.head_revision()}" in result.stdout

    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        assert connection.execute(select(api_keys.c.name)).scalars().all() == ["old"]
        assert connection.execute(select(usage_logs.c.completion_tokens)).scalars().all() == [2]
        assert migrate.current_revision(connection) == migrate.head_revision()
    engine.dispose()


def test_instances_starting_together_migrate_once(database_url: str, tmp_path: Path) -> None:
    """Several `db upgrade` processes at once: the lock lets one migrate, the others find it done."""
    environment = {"OLLAMA_GATE_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "ollama_gate", "db", "upgrade"],
            env=environment,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], [err for _, err in outputs]
    assert all(f"revision {migrate.head_revision()}" in out for out, _ in outputs)
    current = subprocess.run(
        [sys.executable, "-m", "ollama_gate", "db", "current"],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"database at revision {migrate.head_revision()}" in current.stdout


async def test_a_batch_of_usage_rows_is_one_round_trip(database: Database) -> None:
    """SQLite: one executemany of the INSERT, then one of the upsert per rollup table, however many rows
    and users the batch has; PostgreSQL: one COPY and the driver's own executemany per rollup table (no
    statement through SQLAlchemy at all)."""
    await database.upgrade()
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            statements.append(statement)

    event.listen(database.engine.sync_engine, "before_cursor_execute", count)
    await SqlUsageStore(database).add_many([usage(f"user{i}") for i in range(500)])
    rollups = [s for s in statements if "ON CONFLICT" in s.upper()]
    assert len(statements) - len(rollups) == (1 if database.is_sqlite else 0)
    assert len(rollups) == (3 if database.is_sqlite else 0)
    assert await SqlUsageStore(database).count() == 500


async def test_every_field_of_a_usage_row_reads_back_as_written(database: Database) -> None:
    """The batch goes to the driver itself (an executemany of tuples, or COPY): each field, the
    timestamp to the microsecond (given in another zone, stored as UTC), comes back as it was."""
    await database.upgrade()
    store = SqlUsageStore(database)
    written = UsageRecord(
        timestamp=datetime(2026, 11, 25, 13, 4, 5, 123456, tzinfo=timezone(timedelta(hours=1))),
        user="alice",
        tier=Tier.MEMBER,
        key_id=2**40,
        client_ip="2001:db8::1",
        endpoint="/v1/chat/completions",
        model="llama3.2:1b",
        status=499,
        outcome=Outcome.CANCELLED,
        latency_ms=12.345,
        prompt_tokens=None,
        completion_tokens=7,
        plan="team",
        queue_ms=0.5,
        request_id="req-1",
    )
    await store.add_many([written, replace(written, model="m" * 300, request_id=None, queue_ms=None)])
    long_model, row = await store.recent(2, None)
    assert row == replace(written, id=row.id, timestamp=datetime(2026, 11, 25, 12, 4, 5, 123456, tzinfo=UTC))
    assert long_model.model == "m" * MAX_MODEL_LENGTH  # cut to the column, the batch kept
    assert (long_model.request_id, long_model.queue_ms) == (None, None)
