"""The GPU queue service: waiting, timing out, leaving, refusals that consume nothing, failover."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gate.domain.errors import QueueFull, QueueTimeout, TooManyQueued, UpstreamUnavailable
from ollama_gate.domain.identity import Caller
from ollama_gate.domain.plans import Plan
from ollama_gate.domain.usage import TokenCounts
from ollama_gate.ports.llm import UpstreamState
from ollama_gate.services.gatekeeper import Ticket
from ollama_gate.services.gpu_queue import GpuQueue
from tests.unit.fakes import FakeClock, FakeSharedSlots, ticket

MODEL = "smollm:latest"


class Inventory:
    def __init__(self, *names: str) -> None:
        self.states = [UpstreamState(f"http://{n}", n, True, 0, (MODEL,), ()) for n in names]
        self.inventory_version = 1
        self.health_version = 0

    def upstream_states(self) -> list[UpstreamState]:
        return self.states


def queue(
    slots: dict[str, int | None] | None = None,
    inventory: Inventory | None = None,
    max_waiting: int = 1000,
    max_per_identity: int = 8,
    shared: FakeSharedSlots | None = None,
) -> GpuQueue:
    slots = slots or {"gpu0": 1}
    return GpuQueue(
        inventory or Inventory(*slots), FakeClock(), slots, max_waiting, max_per_identity, shared=shared
    )


def caller(name: str) -> Caller:
    return Caller.member(name, 1, "10.0.0.1")


def on(plan: Plan, name: str = "alice") -> Ticket:
    return ticket(caller(name), plan)


async def test_a_free_slot_is_taken_at_once_and_given_back_when_the_ticket_ends() -> None:
    gpu = queue()
    held = on(Plan("member"))
    hold = await gpu.acquire(held, MODEL)
    assert hold == "gpu0" and held.queue_ms == 0
    waiting = asyncio.create_task(gpu.acquire(on(Plan("member"), "bob"), MODEL))
    await asyncio.sleep(0)
    assert not waiting.done() and gpu.queue.waiting == 1
    held.end(TokenCounts())
    granted = await asyncio.wait_for(waiting, 1)
    assert granted == "gpu0"


async def test_a_request_that_waits_its_queue_timeout_is_refused_and_refunded() -> None:
    gpu = queue()
    await gpu.acquire(on(Plan("member")), MODEL)
    impatient = on(Plan("member", queue_timeout=0.05), "bob")
    with pytest.raises(QueueTimeout) as raised:
        await gpu.acquire(impatient, MODEL)
    assert raised.value.status == 503 and raised.value.retry_after is not None
    assert impatient.ended  # refunded: it consumed nothing
    assert gpu.queue.waiting == 0


async def test_a_slot_freed_after_the_deadline_fired_goes_to_the_next_in_line() -> None:
    gpu = queue()
    held = on(Plan("member"))
    await gpu.acquire(held, MODEL)
    late = on(Plan("member", queue_timeout=30), "bob")
    waiting = asyncio.create_task(gpu.acquire(late, MODEL))
    await asyncio.sleep(0)
    [waiter] = gpu._waiters.values()
    waiter.set_exception(TimeoutError())  # its deadline fires ...
    held.end(TokenCounts())  # ... and the slot frees in the same instant, before it resumes
    with pytest.raises(QueueTimeout):
        await asyncio.wait_for(waiting, 1)
    assert late.ended and gpu.queue.waiting == 0
    assert await asyncio.wait_for(gpu.acquire(on(Plan("member"), "carol"), MODEL), 1) is not None


async def test_a_client_that_leaves_while_waiting_is_out_of_the_queue_at_once() -> None:
    gpu = queue()
    holder = on(Plan("member"))
    await gpu.acquire(holder, MODEL)
    leaving = on(Plan("member"), "bob")
    waiting = asyncio.create_task(gpu.acquire(leaving, MODEL))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert gpu.queue.waiting == 0 and leaving.ended and leaving.queue_ms is not None
    holder.end(TokenCounts())
    assert gpu.table.upstreams["gpu0"].busy == {}  # its slot went to nobody: nobody else waited


async def test_the_bounds_refuse_at_once_and_refund() -> None:
    gpu = queue(max_waiting=2, max_per_identity=1)
    await gpu.acquire(on(Plan("member"), "holder"), MODEL)
    first = asyncio.create_task(gpu.acquire(on(Plan("member"), "alice"), MODEL))
    await asyncio.sleep(0)
    again = on(Plan("member"), "alice")
    with pytest.raises(TooManyQueued):
        await gpu.acquire(again, MODEL)
    assert again.ended
    second = asyncio.create_task(gpu.acquire(on(Plan("member"), "bob"), MODEL))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await gpu.acquire(on(Plan("member"), "carol"), MODEL)
    for task in (first, second):
        task.cancel()
    await asyncio.gather(first, second, return_exceptions=True)


async def test_a_model_no_upstream_has_needs_no_slot() -> None:
    gpu = queue()
    assert await gpu.acquire(on(Plan("member")), "not-there:1b") is None
    assert await queue({"gpu0": None}).acquire(on(Plan("member")), MODEL) is None  # the queue is off


async def test_a_server_that_refuses_connections_gives_its_slot_back_and_the_request_goes_elsewhere() -> None:
    inventory = Inventory("gpu0", "gpu1")
    gpu = queue({"gpu0": 1, "gpu1": 1}, inventory)
    tried: list[str | None] = []

    async def send(upstream: str | None) -> str:
        tried.append(upstream)
        if len(tried) == 1:
            # The router marks the server down as it fails to connect.
            down = int(str(upstream)[-1])
            inventory.states[down] = UpstreamState(
                f"http://{upstream}", str(upstream), False, 0, (MODEL,), ()
            )
            inventory.inventory_version += 1
            raise UpstreamUnavailable(f"cannot connect to {upstream}")
        return "answered"

    assert await gpu.send(on(Plan("member")), MODEL, send) == "answered"
    first, second = tried
    assert {first, second} == {"gpu0", "gpu1"}
    assert gpu.table.upstreams[str(first)].busy == {} and gpu.table.upstreams[str(second)].busy == {MODEL: 1}


# -- slots asked for ahead of the admission (slots shared: one Redis round trip for both) -------------


async def test_one_instance_and_a_request_that_would_wait_ask_nothing_ahead() -> None:
    assert queue().reserve("alice", Plan("member"), MODEL) is None  # one instance: no I/O to save
    shared = FakeSharedSlots()
    gpu = queue(shared=shared)
    held = on(Plan("member"))
    await gpu.acquire(held, MODEL)
    waiting = asyncio.create_task(gpu.acquire(on(Plan("member"), "bob"), MODEL))
    await asyncio.sleep(0)
    assert gpu.reserve("carol", Plan("member"), MODEL) is None  # it would wait behind bob
    assert gpu.reserve("carol", Plan("member"), "not-there:1b") is None  # it needs no slot
    held.end(TokenCounts())
    await asyncio.wait_for(waiting, 1)


async def test_a_reserved_slot_is_taken_over_by_acquire_without_asking_again() -> None:
    shared = FakeSharedSlots()
    gpu = queue(shared=shared)
    reserved = gpu.reserve("alice", Plan("member"), MODEL)
    assert reserved is not None and shared.held == 1
    held = on(Plan("member"))
    gpu.keep(reserved, held)
    hold = await gpu.acquire(held, MODEL)
    assert hold == "gpu0" and held.queue_ms == 0
    assert shared.asked == 1 and gpu.table.upstreams["gpu0"].busy == {MODEL: 1}
    held.end(TokenCounts())
    assert shared.held == 0 and gpu.table.upstreams["gpu0"].busy == {}


@pytest.mark.parametrize("answered", [True, False], ids=["answered", "still-asking"])
async def test_a_request_refused_or_ended_before_it_acquires_gives_its_reserved_slot_back(
    answered: bool,
) -> None:
    shared = FakeSharedSlots(hold=True)
    gpu = queue(shared=shared)
    refused = gpu.reserve("alice", Plan("member"), MODEL)  # its admission then says 429
    ended = gpu.reserve("bob", Plan("member"), MODEL)  # admitted, then failed before it was sent
    assert refused is not None and ended is not None
    if answered:
        shared.answer()
        assert shared.held == 1  # one slot: alice's
    bobs = on(Plan("member"), "bob")
    gpu.keep(ended, bobs)
    refused.cancel()
    bobs.refund()
    shared.answer()
    assert shared.held == 0 and shared.most_held == 1
    shared.hold = False
    carol = on(Plan("member"), "carol")
    hold = await asyncio.wait_for(gpu.acquire(carol, MODEL), 1)  # the slot is free again
    assert hold is not None


async def test_a_reservation_for_another_model_is_given_back() -> None:
    shared = FakeSharedSlots()
    gpu = queue(shared=shared)
    reserved = gpu.reserve("alice", Plan("member"), MODEL)
    assert reserved is not None
    held = on(Plan("member"))
    gpu.keep(reserved, held)
    assert await gpu.acquire(held, "not-there:1b") is None
    assert shared.held == 0


async def test_a_client_that_leaves_while_its_reserved_slot_is_asked_for_gives_it_back() -> None:
    shared = FakeSharedSlots(hold=True)
    gpu = queue(shared=shared)
    reserved = gpu.reserve("alice", Plan("member"), MODEL)
    assert reserved is not None
    held = on(Plan("member"))
    gpu.keep(reserved, held)
    acquiring = asyncio.create_task(gpu.acquire(held, MODEL))
    await asyncio.sleep(0)
    acquiring.cancel()
    with pytest.raises(asyncio.CancelledError):
        await acquiring
    held.refund()
    shared.answer()  # the answer comes after it left: the slot goes straight back
    assert shared.held == 0 and gpu.table.upstreams["gpu0"].busy == {}


async def test_a_reservation_while_the_shared_store_is_down_takes_a_slot_of_its_own_count() -> None:
    shared = FakeSharedSlots()
    shared.down = True
    gpu = queue(shared=shared)
    reserved = gpu.reserve("alice", Plan("member"), MODEL)
    assert reserved is not None
    held = on(Plan("member"))
    gpu.keep(reserved, held)
    hold = await gpu.acquire(held, MODEL)
    assert hold is not None and gpu.table.upstreams["gpu0"].busy == {MODEL: 1}
    held.end(TokenCounts())
    assert gpu.table.upstreams["gpu0"].busy == {}


FATES = ("served", "refused", "ended_before_acquire", "left_while_asking", "other_model")


@settings(max_examples=150, deadline=None)
@given(
    fates=st.lists(st.sampled_from(FATES), min_size=1, max_size=10),
    slots=st.integers(min_value=1, max_value=3),
    hold=st.booleans(),
)
def test_reserved_slots_never_exceed_the_slots_and_all_come_back(
    fates: list[str], slots: int, hold: bool
) -> None:
    """However each request ends (refused, failed before it was sent, gone while its slot was asked for,
    sent for another model, or served), the shared slots held never pass the slots and are all given
    back; every request that stays is served."""

    async def scenario() -> None:
        shared = FakeSharedSlots(hold=hold)
        gpu = queue({"gpu0": slots}, shared=shared)
        running: list[tuple[str, Ticket, asyncio.Task[object]]] = []
        for n, fate in enumerate(fates):
            reserved = gpu.reserve(f"user{n}", Plan("member"), MODEL)
            if fate == "refused":
                if reserved is not None:
                    reserved.cancel()
                continue
            held = on(Plan("member"), f"user{n}")
            if reserved is not None:
                gpu.keep(reserved, held)
            if fate == "ended_before_acquire":
                held.refund()
                continue
            model = "not-there:1b" if fate == "other_model" else MODEL
            running.append((fate, held, asyncio.create_task(gpu.acquire(held, model))))
        await asyncio.sleep(0)
        for fate, _, task in running:
            if fate == "left_while_asking" and not task.done():
                task.cancel()
        for _ in range(200):
            shared.answer()
            await asyncio.sleep(0)
            for _fate, held, task in running:
                if task.done() and not held.ended:
                    held.end(TokenCounts())  # served (or gone): the request ends
            if all(task.done() for _, _, task in running) and not shared._pending:
                break
            assert shared.held <= slots
        assert all(task.done() for _, _, task in running)
        for fate, _, task in running:
            if fate == "served":
                assert not task.cancelled() and task.exception() is None and task.result() is not None
        assert shared.most_held <= slots
        assert shared.held == 0 and gpu.table.upstreams["gpu0"].busy == {}
        assert gpu.queue.waiting == 0

    asyncio.run(scenario())


def test_a_queue_started_again_in_another_event_loop_still_times_its_waiters_out() -> None:
    gpu = queue()

    async def one_waits_out() -> None:
        held = on(Plan("member"))
        await gpu.acquire(held, MODEL)
        with pytest.raises(QueueTimeout):
            await gpu.acquire(on(Plan("member", queue_timeout=0.02), "bob"), MODEL)
        held.end(TokenCounts())

    asyncio.run(one_waits_out())
    asyncio.run(one_waits_out())  # the first loop is closed: its timer cannot serve this one
    assert gpu.queue.waiting == 0 and not gpu.table.upstreams["gpu0"].busy
