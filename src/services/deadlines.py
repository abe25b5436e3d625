"""Many deadlines on one timer: the GPU queue's waiting requests each have one (their plan's
`queue_timeout`), and a loop timer per request cost about 580 bytes of each of 10,000 waiting requests.

A deadline is a (time, key) pair in a heap, and one timer is armed for the earliest. A deadline whose
request was served first is not looked for in the heap: it is dropped when its time comes, or when the
stale entries outnumber the live ones when a deadline is added (the heap is then rebuilt from the live
ones): its size stays within about twice the waiting requests, plus those served since the last addition
whose deadlines have not come yet.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable

# A timer may fire up to the loop's clock resolution early: what falls due within it is due.
_EARLY = 0.001
_STALE_SLACK = 64


class Deadlines:
    """`expire(key)` at each deadline added, for the keys that `live(key)` still holds then."""

    __slots__ = ("_expire", "_heap", "_live", "_loop", "_timer")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, live: Callable[[int], bool], expire: Callable[[int], None]
    ) -> None:
        self._loop = loop
        self._live = live
        self._expire = expire
        self._heap: list[tuple[float, int]] = []
        self._timer: asyncio.TimerHandle | None = None

    def runs_in(self, loop: asyncio.AbstractEventLoop) -> bool:
        return loop is self._loop

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, key: int, seconds: float, live_count: int) -> None:
        """`key` expires `seconds` from now; `live_count` is how many keys are live (for the clean-up)."""
        at = self._loop.time() + seconds
        if len(self._heap) > 2 * live_count + _STALE_SLACK:
            self._heap = [entry for entry in self._heap if self._live(entry[1])]
            heapq.heapify(self._heap)
        heapq.heappush(self._heap, (at, key))
        if self._timer is None or at < self._timer.when():
            self._arm(at)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        due = self._loop.time() + _EARLY
        heap = self._heap
        while heap and heap[0][0] <= due:
            _, key = heapq.heappop(heap)
            if self._live(key):
                self._expire(key)
        if heap:
            self._arm(heap[0][0])
