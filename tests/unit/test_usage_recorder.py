"""The background usage writer: batches, flushes on time, survives an outage, drops visibly, drains."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import pytest

from ollama_gate.adapters.memory_stores import InMemoryUsageStore
from ollama_gate.domain.identity import Tier
from ollama_gate.domain.usage import Outcome, UsageRecord
from ollama_gate.services.usage_recorder import UsageRecorder
from tests.unit.fakes import FakeClock


def row(n: int) -> UsageRecord:
    """A usage row told apart by its latency."""
    return UsageRecord(
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        user="anonymous",
        tier=Tier.ANONYMOUS,
        key_id=None,
        client_ip="10.0.0.1",
        endpoint="/chat",
        model="smollm:latest",
        status=200,
        outcome=Outcome.OK,
        latency_ms=float(n),
        prompt_tokens=1,
        completion_tokens=2,
    )


def numbers(store: InMemoryUsageStore) -> list[int]:
    return [int(r.latency_ms) for r in store.rows]


async def eventually(condition: Callable[[], bool], attempts: int = 2000) -> None:
    """Let the writer run until `condition` holds; a bounded number of short yields, not a timing claim."""
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


@contextlib.asynccontextmanager
async def running(recorder: UsageRecorder) -> AsyncIterator[UsageRecorder]:
    await recorder.start()
    try:
        yield recorder
    finally:
        await recorder.close(timeout=1.0)


async def test_flush_writes_in_batches_of_batch_size(usage_store: InMemoryUsageStore) -> None:
    recorder = UsageRecorder(usage_store, FakeClock(), batch_size=4)
    for n in range(10):
        recorder.record(row(n))
    assert usage_store.rows == [] and recorder.unsaved == 10
    assert await recorder.flush()
    assert usage_store.batches == 3
    assert numbers(usage_store) == list(range(10))
    assert recorder.unsaved == 0 and recorder.recorded == 10


async def test_a_full_batch_is_written_without_waiting_for_the_interval(
    usage_store: InMemoryUsageStore,
) -> None:
    recorder = UsageRecorder(usage_store, FakeClock(), batch_size=5, flush_interval=3600)
    async with running(recorder):
        for n in range(4):
            recorder.record(row(n))
        for _ in range(20):
            await asyncio.sleep(0)
        assert usage_store.rows == []  # below a batch: waits for the interval
        recorder.record(row(4))
        await eventually(lambda: len(usage_store.rows) == 5)
        assert usage_store.batches == 1


async def test_a_partial_batch_is_written_after_the_flush_interval(usage_store: InMemoryUsageStore) -> None:
    recorder = UsageRecorder(usage_store, FakeClock(), batch_size=500, flush_interval=0.005)
    async with running(recorder):
        recorder.record(row(1))
        await eventually(lambda: len(usage_store.rows) == 1)
        recorder.record(row(2))
        recorder.record(row(3))
        await eventually(lambda: len(usage_store.rows) == 3)
    assert numbers(usage_store) == [1, 2, 3]


async def test_rows_wait_out_an_outage_and_are_retried(usage_store: InMemoryUsageStore) -> None:
    recorder = UsageRecorder(
        usage_store, FakeClock(), batch_size=3, flush_interval=0.002, max_retry_interval=0.004
    )
    async with running(recorder):
        usage_store.available = False
        for n in range(7):
            recorder.record(row(n))
        # The writer keeps trying and keeps every row meanwhile.
        for _ in range(10):
            await asyncio.sleep(0.002)
            assert recorder.unsaved == 7
        assert usage_store.rows == []
        usage_store.available = True
        await eventually(lambda: len(usage_store.rows) == 7)
    assert numbers(usage_store) == list(range(7))
    assert recorder.dropped == 0


async def test_flush_during_an_outage_keeps_rows_in_order(usage_store: InMemoryUsageStore) -> None:
    recorder = UsageRecorder(usage_store, FakeClock(), batch_size=2)
    for n in range(5):
        recorder.record(row(n))
    usage_store.available = False
    assert not await recorder.flush()
    assert recorder.unsaved == 5
    recorder.record(row(5))
    usage_store.available = True
    assert await recorder.flush()
    assert numbers(usage_store) == list(range(6))


async def test_overflow_drops_the_oldest_and_counts_them(
    usage_store: InMemoryUsageStore, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = UsageRecorder(usage_store, FakeClock(), max_pending=5, batch_size=100)
    usage_store.available = False
    for n in range(8):
        recorder.record(row(n))
    assert recorder.dropped == 3
    assert recorder.unsaved == 5
    assert "dropped" in caplog.text  # never silently
    assert not await recorder.flush()
    usage_store.available = True
    assert await recorder.flush()
    assert numbers(usage_store) == [3, 4, 5, 6, 7]
    assert recorder.recorded == 8


async def test_close_writes_everything_pending(usage_store: InMemoryUsageStore) -> None:
    recorder = UsageRecorder(usage_store, FakeClock(), batch_size=100, flush_interval=3600)
    await recorder.start()
    for n in range(250):
        recorder.record(row(n))
    await recorder.close()
    assert numbers(usage_store) == list(range(250))
    assert recorder.unsaved == 0


async def test_close_retries_a_briefly_unavailable_store(usage_store: InMemoryUsageStore) -> None:
    recorder = UsageRecorder(usage_store, FakeClock(), flush_interval=3600)
    await recorder.start()
    recorder.record(row(1))
    usage_store.available = False
    closing = asyncio.create_task(recorder.close(timeout=5.0))
    for _ in range(20):
        await asyncio.sleep(0)  # close() tries, fails and waits to retry
    assert not closing.done() and recorder.unsaved == 1
    usage_store.available = True
    await closing
    assert numbers(usage_store) == [1]


async def test_close_gives_up_on_a_dead_store_and_says_so(
    usage_store: InMemoryUsageStore, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = UsageRecorder(usage_store, FakeClock())
    recorder.record(row(1))
    usage_store.available = False
    await recorder.close(timeout=0.01)
    assert recorder.unsaved == 1
    assert "1 usage rows not written" in caplog.text


class SlowUsageStore(InMemoryUsageStore):
    """A store whose writes take until the test lets them finish, like a real database round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = asyncio.Event()
        self.proceed = asyncio.Event()
        self.written: list[list[int]] = []

    async def add_many(self, records: Sequence[UsageRecord]) -> None:
        self.writing.set()
        await self.proceed.wait()
        self.written.append([int(r.latency_ms) for r in records])
        await super().add_many(records)


async def test_close_during_a_write_loses_no_row() -> None:
    """A stop (SIGTERM) that arrives while a batch is being written must not lose that batch."""
    store = SlowUsageStore()
    recorder = UsageRecorder(store, FakeClock(), batch_size=2, flush_interval=3600)
    await recorder.start()
    for n in range(3):
        recorder.record(row(n))
    await asyncio.wait_for(store.writing.wait(), 5)
    closing = asyncio.create_task(recorder.close(timeout=5.0))
    await asyncio.sleep(0)
    store.proceed.set()
    await asyncio.wait_for(closing, 5)
    assert sorted(numbers(store)) == [0, 1, 2]
    assert recorder.unsaved == 0


async def test_rows_recorded_during_a_write_wait_for_the_next_flush() -> None:
    """Under load the writer must not chase each write with a batch of whatever arrived during it (on
    PostgreSQL that was a transaction per 8 requests): a flush writes what was pending when it began."""
    store = SlowUsageStore()
    recorder = UsageRecorder(store, FakeClock(), batch_size=100, flush_interval=3600)
    for n in range(3):
        recorder.record(row(n))
    flushing = asyncio.create_task(recorder.flush())
    await asyncio.wait_for(store.writing.wait(), 5)
    for n in range(3, 8):
        recorder.record(row(n))  # arrive while the first batch is being written
    store.proceed.set()
    assert await asyncio.wait_for(flushing, 5) is True
    assert store.written == [[0, 1, 2]] and recorder.unsaved == 5
    assert await recorder.flush() is True
    assert store.written == [[0, 1, 2], [3, 4, 5, 6, 7]] and recorder.unsaved == 0
