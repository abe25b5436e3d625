"""The background writer: usage rows leave the request path at once and reach the store in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from ollama_gate.domain.errors import StoreUnavailable
from ollama_gate.domain.usage import Outcome, TokenCounts, UsageRecord
from ollama_gate.ports.clock import Clock
from ollama_gate.ports.stores import UsageStore
from ollama_gate.ports.telemetry import Telemetry
from ollama_gate.services.background import BackgroundTask
from ollama_gate.services.gatekeeper import Ticket

log = logging.getLogger(__name__)


class UsageRecorder:
    """Buffers usage rows and writes them through the UsageStore.

    Flushes every `flush_interval` seconds, or as soon as `batch_size` rows wait. While the store is
    down, rows stay in a buffer of at most `max_pending`; past that the oldest are dropped, logged and
    counted (`dropped`). `close()` writes everything still pending.
    """

    def __init__(
        self,
        store: UsageStore,
        clock: Clock,
        max_pending: int = 100_000,
        batch_size: int = 500,
        flush_interval: float = 0.25,
        max_retry_interval: float = 5.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._store = store
        self._telemetry = telemetry
        self._clock = clock
        self._max_pending = max_pending
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_retry_interval = max_retry_interval
        self._pending: deque[UsageRecord] = deque()
        self._writing = 0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._writer = BackgroundTask("usage-recorder", self._run)
        self._store_down = False
        self.recorded = 0
        self.dropped = 0

    @property
    def unsaved(self) -> int:
        """Rows recorded but not yet in the store (waiting or being written)."""
        return len(self._pending) + self._writing

    async def total(self, stored: Callable[[], Awaitable[int]]) -> int:
        """The rows in the store, as `stored()` counts them, plus the rows not yet there. Counted while no
        batch is on its way: a count taken during a write may or may not hold its batch, while `unsaved`
        still has it or no longer does, and the sum would miss the batch or count it twice."""
        async with self._lock:
            return await stored() + self.unsaved

    def record(self, record: UsageRecord) -> None:
        self._pending.append(record)
        self.recorded += 1
        if len(self._pending) > self._max_pending:
            self._pending.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "usage buffer full (%d rows): dropped the oldest row, %d dropped since start",
                    self._max_pending,
                    self.dropped,
                )
        if len(self._pending) >= self._batch_size:
            self._wake.set()

    def request_ended(
        self,
        ticket: Ticket,
        endpoint: str,
        model: str | None,
        status: int,
        outcome: Outcome,
        started: float,
        tokens: TokenCounts,
    ) -> None:
        """The end of an admitted request that began at `started` (the clock's monotonic time): its one
        usage row, and its ticket ended (the tokens charged to its plan, its lease given back)."""
        caller = ticket.caller
        self.record(
            UsageRecord(
                timestamp=self._clock.now(),
                user=caller.user,
                tier=caller.tier,
                key_id=caller.key_id,
                client_ip=caller.client_ip,
                endpoint=endpoint,
                model=model,
                status=status,
                outcome=outcome,
                latency_ms=round((self._clock.monotonic() - started) * 1000, 3),
                prompt_tokens=tokens.prompt,
                completion_tokens=tokens.completion,
                plan=ticket.plan.name,
                queue_ms=ticket.queue_ms,
                request_id=ticket.request_id,
            )
        )
        if self._telemetry is not None:
            self._telemetry.tokens(model, ticket.plan.name, tokens.prompt or 0, tokens.completion or 0)
        ticket.end(tokens)

    async def start(self) -> None:
        self._writer.start()

    async def close(self, timeout: float = 10.0) -> None:
        """Stop the loop and write what is pending, retrying for up to `timeout` seconds."""
        # Cancel the loop between writes only: a batch cancelled mid-write would be lost.
        async with self._lock:
            self._writer.cancel()
        await self._writer.stop()
        deadline = asyncio.get_running_loop().time() + timeout
        while self._pending:
            if await self.flush():
                continue
            if asyncio.get_running_loop().time() >= deadline:
                log.error("database unavailable at shutdown: %d usage rows not written", len(self._pending))
                return
            await asyncio.sleep(0.2)

    async def flush(self) -> bool:
        """Write the rows pending when it is called; False if the store is unavailable (rows are kept).

        Rows recorded while it writes wait for the next flush (the interval, or a full batch): going on
        with them at once made a batch of whatever arrived during one write's round trip, a transaction
        per 8 requests on PostgreSQL under load instead of one per interval or per full batch."""
        async with self._lock:
            due = len(self._pending)
            while due > 0 and self._pending:
                count = min(self._batch_size, due, len(self._pending))
                due -= count
                batch = [self._pending.popleft() for _ in range(count)]
                self._writing = count
                try:
                    await self._store.add_many(batch)
                except StoreUnavailable:
                    self._pending.extendleft(reversed(batch))
                    self._trim()
                    if not self._store_down:
                        log.warning(
                            "database unavailable: %d usage rows buffered, retrying", len(self._pending)
                        )
                    self._store_down = True
                    return False
                finally:
                    self._writing = 0
            if self._store_down:
                log.warning("database available again: buffered usage rows written")
                self._store_down = False
            return True

    def _trim(self) -> None:
        while len(self._pending) > self._max_pending:
            self._pending.popleft()
            self.dropped += 1

    async def _run(self) -> None:
        interval = self._flush_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                written = await self.flush()
            except Exception:
                log.exception("usage writer failed; rows are kept and retried")
                written = False
            # Back off while the store is down, so a dead database is not hammered.
            interval = self._flush_interval if written else min(interval * 2, self._max_retry_interval)
