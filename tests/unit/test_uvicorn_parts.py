"""The lean stand-ins behave as the asyncio.Event and deque they replace, for what uvicorn does with them."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from ollama_gate.entrypoints.uvicorn_parts import LeanEvent, Pipeline


async def test_an_event_wakes_every_waiter_and_later_waits_return_at_once() -> None:
    event = LeanEvent()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters) and not event.is_set()
    event.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert await asyncio.wait_for(event.wait(), 1) is True


async def test_a_cleared_event_blocks_again_until_it_is_set() -> None:
    event = LeanEvent(True)
    event.clear()
    waiter = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    event.set()
    assert await waiter is True


async def test_a_cancelled_waiter_leaves_and_the_others_still_wake() -> None:
    event = LeanEvent()
    leaving = asyncio.create_task(event.wait())
    staying = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    event.set()
    assert await staying is True
    event.clear()
    again = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    event.set()
    assert await again is True


def test_the_pipeline_hands_requests_out_first_in_first_out() -> None:
    pipeline = Pipeline()
    assert not pipeline
    cycles = [cast(RequestResponseCycle, object()) for _ in range(3)]
    for cycle in cycles:
        pipeline.appendleft((cycle, None))
    assert [pipeline.pop()[0] for _ in range(3)] == cycles
    assert not pipeline
