"""One timer for many deadlines: each live key expires at its own time, served ones never do, and the
heap stays within twice the live keys however many were served before their time."""

from __future__ import annotations

import asyncio

from ollama_gate.services.deadlines import Deadlines


async def test_each_live_key_expires_at_its_own_deadline_in_order() -> None:
    live = {1, 2, 3}
    expired: list[int] = []
    deadlines = Deadlines(asyncio.get_running_loop(), live.__contains__, expired.append)
    deadlines.add(1, 0.06, len(live))
    deadlines.add(2, 0.02, len(live))  # earlier than the armed one: the timer is re-armed for it
    deadlines.add(3, 0.04, len(live))
    await asyncio.sleep(0.03)
    assert expired == [2]
    await asyncio.sleep(0.05)
    assert expired == [2, 3, 1]
    assert len(deadlines) == 0


async def test_a_key_served_before_its_deadline_does_not_expire() -> None:
    live = {1, 2}
    expired: list[int] = []
    deadlines = Deadlines(asyncio.get_running_loop(), live.__contains__, expired.append)
    deadlines.add(1, 0.02, len(live))
    deadlines.add(2, 0.03, len(live))
    live.discard(1)  # granted a slot first
    await asyncio.sleep(0.06)
    assert expired == [2]


async def test_stale_deadlines_are_dropped_once_they_outnumber_the_live_ones() -> None:
    live: set[int] = set()
    deadlines = Deadlines(asyncio.get_running_loop(), live.__contains__, lambda key: None)
    for key in range(10_000):
        live.add(key)
        deadlines.add(key, 900.0, len(live))
        live.discard(key)  # served at once: only its heap entry is left
    assert len(deadlines) <= 2 * len(live) + 65
