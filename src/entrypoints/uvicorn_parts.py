"""Smaller stand-ins for the parts uvicorn's httptools protocol allocates for every connection and request.

A request waiting for the GPU keeps its connection, and everything uvicorn made for it, for as long as it
waits: thousands of them hold these parts at once. uvicorn's own versions each carry a `collections.deque`
(624 bytes, allocated whether or not anything is ever queued in it); these behave the same for the
operations uvicorn 0.54 uses (see `BoundedHttpToolsProtocol`, which puts them in place).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle


class LeanEvent:
    """asyncio.Event as uvicorn's request cycle and flow control use it (set, clear, is_set, wait), without
    the waiter deque asyncio's allocates up front: 624 bytes each, two per connection, while hardly any
    connection ever has a waiter (only a request reading its body, or a response held by a slow reader)."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters
        waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            waiters.remove(waiter)
            if not waiters and self._waiters is waiters:
                self._waiters = None


class Pipeline(list[tuple[RequestResponseCycle, Any]]):
    """The pipelined requests waiting their turn, as uvicorn uses its deque (`appendleft`, `pop`, truth):
    an empty list is 56 bytes, an empty deque 624, on every connection."""

    __slots__ = ()

    def appendleft(self, item: tuple[RequestResponseCycle, Any]) -> None:
        self.insert(0, item)


class LeanFlowControl(FlowControl):
    """uvicorn's flow control with the lean event (the connection's writes are allowed from the start)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__(transport)
        self._is_writable_event = cast(asyncio.Event, LeanEvent(True))
