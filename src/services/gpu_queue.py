"""The gateway's queue in front of Ollama's slots: a metered request takes a slot on an upstream that has
its model before it is sent, and gives it back when it ends, however it ends.

Who goes next is the domain's FairQueue (domain/scheduler.py); this service adds the waiting: a future per
waiting request, its plan's `queue_timeout`, its client leaving (the request's task is cancelled: it
leaves the queue at once and never reaches Ollama), and the slots themselves: counted here (one
instance), or shared by every instance through a `SharedSlots` port (Redis).

With slots free, a request takes one at once: no future, no task, no coroutine, no I/O (in one instance).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from enum import Enum, auto
from functools import partial
from typing import Any, Literal, TypeVar

from ollama_gate.domain.errors import QueueFull, QueueTimeout, TooManyQueued, UpstreamUnavailable
from ollama_gate.domain.immutable import immutable
from ollama_gate.domain.plans import Plan
from ollama_gate.domain.scheduler import (
    FairQueue,
    Job,
    Refusal,
    Running,
    SlotTable,
    UpstreamSlots,
    job_model,
    next_grants,
)
from ollama_gate.ports.clock import Clock
from ollama_gate.ports.llm import UpstreamInventory
from ollama_gate.ports.slots import Claim, SharedSlots, SharedSlotsUnavailable
from ollama_gate.ports.telemetry import Telemetry
from ollama_gate.services.deadlines import Deadlines
from ollama_gate.services.gatekeeper import Ticket

log = logging.getLogger(__name__)

R = TypeVar("R")
# Servers a request may fail over to when the one it had a slot on cannot be connected to.
_FAILOVER_ATTEMPTS = 2


class _InTurn(Enum):
    """What `GpuQueue._at_once` answers when the request cannot have its slot without awaiting."""

    LATER = auto()


class Hold:
    """A slot held by one request: given back once, however many times `release` is called."""

    __slots__ = ("_queue", "_running")

    def __init__(self, queue: GpuQueue, running: Running) -> None:
        self._queue: GpuQueue | None = queue
        self._running = running

    @property
    def upstream(self) -> str:
        return self._running.upstream

    def release(self) -> None:
        if self._queue is not None:
            queue, self._queue = self._queue, None
            queue._finished(self._running)


class Reservation:
    """A shared slot asked for before the request's admission was awaited, so that one Redis round trip
    carries both: taken over by `send`, or given back once, when the request ends before it."""

    __slots__ = ("_queue", "answer", "job")

    def __init__(self, queue: GpuQueue, job: Job, answer: asyncio.Future[str | None]) -> None:
        self._queue: GpuQueue | None = queue
        self.job = job
        self.answer = answer

    def cancel(self) -> None:
        if self._queue is not None:
            queue, self._queue = self._queue, None
            queue._unreserve(self)

    def take_over(self) -> bool:
        """True once: the request now owns the slot asked for (False after `cancel`)."""
        owned, self._queue = self._queue is not None, None
        return owned


@immutable
class ModelQueue:
    """One model as the status shows it, summed over the upstreams that have it."""

    model: str
    slots: int | None
    busy: int
    waiting: int


class GpuQueue:
    """Slots per upstream and model (`slots_of[name]`; None: the gateway does not limit that upstream)."""

    def __init__(
        self,
        inventory: UpstreamInventory,
        clock: Clock,
        slots_of: dict[str, int | None],
        max_waiting: int = 1000,
        max_per_identity: int = 8,
        shared: SharedSlots | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._inventory = inventory
        self._clock = clock
        self._slots_of = slots_of
        self.enabled = any(slots is not None for slots in slots_of.values())
        self.queue = FairQueue(max_waiting, max_per_identity)
        self.table = SlotTable(UpstreamSlots(name, slots) for name, slots in slots_of.items())
        self._shared = shared
        self._telemetry = telemetry
        self._synced = -1
        self._ids = itertools.count(1)
        self._waiters: dict[int, asyncio.Future[Running]] = {}
        self._reserved: dict[Ticket, Reservation] = {}  # slots asked for ahead, until sent or the end
        self._dispatching: set[str] = set()
        self._deadlines: Deadlines | None = None  # made on the first wait, in the running loop
        if shared is not None:
            shared.on_freed(self._slot_freed)

    # -- taking a slot -------------------------------------------------------------------------------

    async def send(self, ticket: Ticket, model: str | None, send: Callable[[str | None], Awaitable[R]]) -> R:
        """`send(upstream)` once `ticket`'s request holds a slot on `upstream` (None: it needs none); the
        slot is given back when the ticket ends. None means the request needs no slot: the queue is off,
        or no online upstream has the model (Ollama's own answer comes at once).

        Raises TooManyQueued (429) or QueueFull (503) at once, QueueTimeout (503) after the plan's
        `queue_timeout`; each refunds the ticket (the request consumed nothing). A client that leaves
        while waiting (CancelledError) is out of the queue at once, and refunded too. A server that
        cannot even be connected to (nothing reached it) gives its slot back, and the request takes one
        elsewhere, as the router's own failover does.
        """
        attempt = 0
        while True:
            hold = self._at_once(ticket, model)
            if hold is _InTurn.LATER:
                taken = await self._in_turn(ticket, model)
                if isinstance(taken, Job):
                    # Its turn is awaited here, not in a coroutine of its own: a waiting request holds
                    # every frame of its chain (about 300 bytes each, for as long as it waits).
                    waiter = self._waiters[taken.id]
                    try:
                        running = await waiter
                    except TimeoutError:
                        raise self._timed_out(ticket, taken, waiter) from None
                    except asyncio.CancelledError:
                        self._left(ticket, taken, waiter)
                        raise
                    finally:
                        self._waiters.pop(taken.id, None)
                    taken = self._granted(ticket, taken, running)
                hold = taken
            try:
                return await send(hold.upstream if hold is not None else None)
            except UpstreamUnavailable:
                if hold is None or attempt >= _FAILOVER_ATTEMPTS:
                    raise
                hold.release()  # the router marked that server down: the next slot is elsewhere
                attempt += 1

    def acquire(self, ticket: Ticket, model: str | None) -> Coroutine[Any, Any, str | None]:
        """The upstream on which `ticket`'s request holds a slot until the ticket ends, as `send` takes it
        (None: it needs none)."""
        return self.send(ticket, model, _upstream_itself)

    def reserve(self, identity: str, plan: Plan, model: str | None) -> Reservation | None:
        """With slots shared, ask now for a slot for a request of `identity` that is about to be admitted,
        so that its admission goes to Redis in the same round trip; `keep` hands it to the request's
        ticket. None when there is nothing to ask ahead: one instance takes its slots without I/O, and a
        request that needs no slot or would wait behind others asks nothing yet."""
        if self._shared is None or not self.enabled:
            return None
        self._sync()
        key = job_model(model)
        if not self.table.serves(key) or self.queue.waiting_for(key):
            return None
        job = self._job(identity, key, plan, self._now())
        return Reservation(self, job, self._ask_shared(job))

    def keep(self, reservation: Reservation, ticket: Ticket) -> None:
        """`ticket`'s request holds `reservation` until `send` takes it over, or its end gives it back."""
        self._reserved[ticket] = reservation
        ticket.on_end(partial(self._drop_reservation, ticket))

    def _drop_reservation(self, ticket: Ticket) -> None:
        reserved = self._reserved.pop(ticket, None)
        if reserved is not None:
            reserved.cancel()

    def _at_once(self, ticket: Ticket, model: str | None) -> Hold | Literal[_InTurn.LATER] | None:
        """`send`'s slot when it needs no await: one instance with a slot free and nobody waiting for the
        model (the common case), or no slot needed; `_InTurn.LATER` when the request must wait or ask the
        shared slots (then nothing has changed yet)."""
        if not self.enabled:
            return None
        if self._shared is not None:
            return _InTurn.LATER
        self._sync()
        key = job_model(model)
        if not self.table.serves(key):
            return None
        if self.queue.waiting_for(key):
            return _InTurn.LATER
        running = self._start_locally(self._job(ticket.caller.counted_as, key, ticket.plan, self._now()))
        if running is None:
            return _InTurn.LATER
        return self._held(ticket, running)

    async def _in_turn(self, ticket: Ticket, model: str | None) -> Hold | Job | None:
        """`send`'s slot once `_at_once` said it cannot be had without awaiting: with slots shared, asked
        for (or taken over from the request's reservation); else, or when none is free, its job queued
        for `send` to await its turn (`_waiters[job.id]`)."""
        key = job_model(model)
        reserved = self._reserved_for(ticket, key)
        self._sync()
        if not self.table.serves(key):
            if reserved is not None:
                reserved.cancel()
            return None
        if reserved is not None and reserved.take_over():
            job = reserved.job
            running = await self._start_reserved(job, reserved.answer)
        else:
            job = self._job(ticket.caller.counted_as, key, ticket.plan, self._now())
            # One instance: `_at_once` found the slots busy or others waiting, and nothing has run since.
            if self._shared is None or self.queue.waiting_for(key):
                running = None
            else:
                running = await self._start_reserved(job, self._ask_shared(job))
        if running is None:
            self._enqueue(ticket, job)
            return job
        return self._held(ticket, running)

    def _granted(self, ticket: Ticket, job: Job, running: Running) -> Hold:
        """The slot a waiting `job` was handed."""
        self._waited(job, ticket.plan.name, running.started)
        return self._held(ticket, running)

    def _held(self, ticket: Ticket, running: Running) -> Hold:
        """`running`'s slot, held by `ticket`'s request until it ends (its wait on its usage row)."""
        ticket.queue_ms = _ms_since(running.job.arrived, running.started)
        hold = Hold(self, running)
        ticket.on_end(hold.release)
        return hold

    def _job(self, identity: str, model: str, plan: Plan, now: float) -> Job:
        return Job(next(self._ids), identity, model, plan.effective_priority, plan.effective_weight, now)

    def _reserved_for(self, ticket: Ticket, model: str) -> Reservation | None:
        """The ticket's reservation when it is for `model` (one for another model is given back)."""
        reserved = self._reserved.pop(ticket, None) if self._reserved else None
        if reserved is None:
            return None
        if reserved.job.model != model:
            reserved.cancel()
            return None
        return reserved

    async def _start_reserved(self, job: Job, answer: asyncio.Future[str | None]) -> Running | None:
        """The request goes at once on the shared slot `answer` names (None: none was free)."""
        upstream = await self._shared_answer(job, answer)
        if upstream is None:
            return None
        self.table.take(upstream, job.model)
        return self.queue.start(job, upstream, self._now())

    def _start_locally(self, job: Job) -> Running | None:
        upstream = self.table.best_free(job.model)
        if upstream is None:
            return None
        self.table.take(upstream, job.model)
        return self.queue.start(job, upstream, job.arrived)

    def _ask_shared(self, job: Job) -> asyncio.Future[str | None]:
        assert self._shared is not None
        return self._shared.take(job.model, self._claim(job), self._preferences(job.model))

    async def _take_shared(self, job: Job) -> str | None:
        return await self._shared_answer(job, self._ask_shared(job))

    async def _shared_answer(self, job: Job, answer: asyncio.Future[str | None]) -> str | None:
        """The shared slot taken for `job`; while the shared store is down, one of this instance's own
        count (the GPU's slots may then be overrun by the instances together: better than nobody
        served)."""
        try:
            return await answer
        except SharedSlotsUnavailable:
            return self.table.best_free(job.model)

    def _unreserve(self, reservation: Reservation) -> None:
        """A reservation its request never took over: a slot it took goes back (one still being asked
        for goes back when the answer comes)."""
        answer = reservation.answer
        if not answer.done():
            answer.cancel()
            return
        if answer.cancelled() or answer.exception() is not None:
            return
        upstream = answer.result()
        if upstream is not None and self._shared is not None:
            model = reservation.job.model
            self._shared.give_back(upstream, model, _lease(reservation.job))
            self._slot_freed(model)

    def _enqueue(self, ticket: Ticket, job: Job) -> None:
        """`job` waits, for the future `_waiters[job.id]` that its grant (or its deadline's TimeoutError)
        ends. Raises QueueFull and TooManyQueued at once, the ticket refunded."""
        refusal = self.queue.refusal(job.identity)
        if refusal is not None:
            self._rejected("queue_full")
            ticket.refund()
            if refusal is Refusal.QUEUE_FULL:
                raise QueueFull("the GPU queue is full: try again shortly")
            raise TooManyQueued(
                f"too many requests waiting for the GPU: at most {self.queue.max_per_identity} per caller"
            )
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Running] = loop.create_future()
        # The deadline ends the future itself (not asyncio.timeout, an object more per waiting request and
        # a cancellation of the task; not a loop timer each either, see services/deadlines.py): whichever
        # of a grant and the deadline comes first is the future's result, and a grant that races the
        # client leaving is handed on by `_leave`. Set first: nothing is queued if it cannot be.
        self._deadlines_in(loop).add(job.id, ticket.plan.effective_queue_timeout, len(self._waiters))
        self._waiters[job.id] = waiter
        self.queue.enqueue(job)
        self._advertise(job.model)
        self._dispatch(job.model)

    def _timed_out(self, ticket: Ticket, job: Job, waiter: asyncio.Future[Running]) -> QueueTimeout:
        self._leave(job, waiter)
        self._rejected("queue_timeout")
        self._waited(job, ticket.plan.name, self._now())
        ticket.refund()
        timeout = ticket.plan.effective_queue_timeout
        return QueueTimeout(
            f"no GPU slot for {job.model or 'the model'} within {timeout:g}s: try again shortly",
            retry_after=max(1.0, math.ceil(timeout / 4)),
        )

    def _left(self, ticket: Ticket, job: Job, waiter: asyncio.Future[Running]) -> None:
        """Its client left: out of the queue, never sent; its usage row shows how long it waited."""
        self._leave(job, waiter)
        ticket.queue_ms = _ms_since(job.arrived, self._now())
        self._waited(job, ticket.plan.name, self._now())
        ticket.refund()

    def _deadlines_in(self, loop: asyncio.AbstractEventLoop) -> Deadlines:
        # The loop the queue first waited in may not be the one it runs in now (an app started again).
        if self._deadlines is None or not self._deadlines.runs_in(loop):
            self._deadlines = Deadlines(loop, self._still_waiting, self._expire_waiter)
        return self._deadlines

    def _still_waiting(self, job_id: int) -> bool:
        waiter = self._waiters.get(job_id)
        return waiter is not None and not waiter.done()

    def _expire_waiter(self, job_id: int) -> None:
        self._waiters[job_id].set_exception(TimeoutError())

    def _rejected(self, reason: str) -> None:
        if self._telemetry is not None:
            self._telemetry.rejected(reason)

    def _waited(self, job: Job, plan: str, until: float) -> None:
        if self._telemetry is not None:
            self._telemetry.queue_waited(job.model, plan, max(0.0, until - job.arrived))

    def _leave(self, job: Job, waiter: asyncio.Future[Running]) -> None:
        """Out of the queue; a slot granted in the same instant goes to the next in line."""
        still_queued = self.queue.cancel(job, self._now())
        # A deadline that fired first left its TimeoutError in the future: then nothing was granted.
        granted = waiter.done() and not waiter.cancelled() and waiter.exception() is None
        if not still_queued and granted:
            self._finished(waiter.result())
        self._advertise(job.model)

    # -- giving slots out ----------------------------------------------------------------------------

    def _finished(self, running: Running) -> None:
        self.table.give_back(running.upstream, running.job.model)
        self.queue.finish(running, self._now())
        if self._shared is not None:
            self._shared.give_back(running.upstream, running.job.model, _lease(running.job))
        if self.queue.waiting:
            self._dispatch(running.job.model)

    def _slot_freed(self, model: str) -> None:
        """Another instance gave a slot back (or one expired): our next in line may take it."""
        if self.queue.waiting_for(model):
            self._dispatch(model)

    def _dispatch(self, model: str) -> None:
        if not self.queue.waiting_for(model):
            return
        if self._shared is None:
            for running in next_grants(self.queue, self.table, [model], self._now()):
                self._hand_over(running)
            self._advertise(model)
        elif model not in self._dispatching:
            self._dispatching.add(model)
            asyncio.get_running_loop().create_task(self._dispatch_shared(model))

    async def _dispatch_shared(self, model: str) -> None:
        try:
            while (job := self.queue.peek(model)) is not None:
                upstream = await self._take_shared(job)
                if upstream is None:
                    break
                if self.queue.peek(model) is not job:  # it left while we asked
                    self._shared.give_back(upstream, model, _lease(job))  # type: ignore[union-attr]
                    continue
                self.table.take(upstream, model)
                self._hand_over(self.queue.start(job, upstream, self._now()))
        except Exception:
            log.exception("handing out shared GPU slots failed; retried on the next event")
        finally:
            self._dispatching.discard(model)
            self._advertise(model)

    def _hand_over(self, running: Running) -> None:
        waiter = self._waiters.get(running.job.id)
        if waiter is None or waiter.done():
            self._finished(running)  # nobody to take it (gone in the same instant): the next one's
        else:
            waiter.set_result(running)

    # -- the shared view -------------------------------------------------------------------------------

    def _claim(self, job: Job) -> Claim:
        usage = self.queue.gpu.key(job.identity, job.weight, self._now())
        return Claim(_lease(job), job.priority, usage, job.arrived)

    def _preferences(self, model: str) -> list[tuple[str, int | None, bool]]:
        """The upstreams that could run `model`, best first, with their slots and whether it is loaded."""
        upstreams = self.table.upstreams
        return [
            (name, upstreams[name].slots, upstreams[name].has_loaded(model))
            for name in self.table.ranked(model)
        ]

    def _advertise(self, model: str) -> None:
        """Tell the other instances who is next here (so the best request anywhere goes first)."""
        if self._shared is not None:
            head = self.queue.peek(model)
            self._shared.advertise(model, self._claim(head) if head is not None else None)

    # -- what the status shows -------------------------------------------------------------------------

    def _sync(self) -> None:
        """Follow the upstreams' health, model lists and loaded models (cheap unless they changed)."""
        version = self._inventory.inventory_version
        if version == self._synced:
            return
        self._synced = version
        for state in self._inventory.upstream_states():
            slots = self.table.upstreams.get(state.name)
            if slots is None:
                continue
            slots.online = state.online
            slots.models = frozenset(state.models) if state.models_known else None
            slots.loaded = frozenset(state.loaded)
        # An upstream that came back (or listed a model now) can take waiting requests.
        for model in self.queue.models_waiting():
            self._dispatch(model)

    async def snapshot(self) -> list[ModelQueue]:
        """`models()`, with the busy slots of every instance when slots are shared."""
        views = self.models()
        if self._shared is None:
            return views
        pairs = [
            (u.name, view.model) for view in views for u in self.table.upstreams.values() if u.has(view.model)
        ]
        busy = await self._shared.busy(pairs)
        if busy is None:
            return views
        return [
            ModelQueue(
                view.model, view.slots, sum(n for (_, m), n in busy.items() if m == view.model), view.waiting
            )
            for view in views
        ]

    def models(self) -> list[ModelQueue]:
        """Each model's slots, busy slots (this instance's) and waiting requests, over the upstreams."""
        self._sync()
        names = sorted(
            {m for u in self.table.upstreams.values() for m in (u.models or ())}
            | {m for u in self.table.upstreams.values() for m in u.busy}
            | set(self.queue.models_waiting())
        )
        views = []
        for model in names:
            having = [u for u in self.table.upstreams.values() if u.has(model)]
            slots = None if any(u.slots is None for u in having) else sum(u.slots or 0 for u in having)
            views.append(
                ModelQueue(
                    model, slots, sum(u.busy.get(model, 0) for u in having), self.queue.waiting_for(model)
                )
            )
        return views

    def waiting_of(self, identity: str) -> int:
        return self.queue.waiting_of(identity)

    def _now(self) -> float:
        # Wall time: instances sharing slots compare arrival times and GPU time with each other.
        return self._clock.time()


def _ms_since(start: float, end: float) -> float:
    return round(max(0.0, end - start) * 1000, 3)


async def _upstream_itself(upstream: str | None) -> str | None:
    return upstream


def _lease(job: Job) -> str:
    return f"job-{job.id}"


def slot_count(slots: int) -> int | None:
    """A configured slot count as the queue takes it: 0 means the gateway does not limit (None)."""
    return slots if slots > 0 else None
