from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from ollama_gate.domain.immutable import immutable


class SharedSlotsUnavailable(Exception):
    """The shared store of slots cannot be reached: the caller decides alone, for now."""


@immutable
class Claim:
    """A request asking for a slot, with what ranks it against every instance's next in line: higher
    `priority` first, then less GPU time (`usage`, the FairQueue's key), then the earlier `arrived`."""

    lease: str
    priority: int
    usage: float
    arrived: float


class SharedSlots(Protocol):
    """The upstreams' slots, shared by every gateway instance: never more requests of a model running on
    an upstream than its slots, summed over instances; a slot whose holder stops renewing it (an instance
    that died) frees itself within seconds."""

    def take(
        self, model: str, claim: Claim, upstreams: Sequence[tuple[str, int | None, bool]]
    ) -> asyncio.Future[str | None]:
        """A slot for `claim` on the first of `upstreams` (name, slots, model loaded there) that has one
        free, preferring those where the model is loaded, then the least busy; None when none is free,
        or when another instance's next in line ranks before `claim` (that one goes first). The future
        raises SharedSlotsUnavailable (at once, while it is known to be down) when the store cannot
        answer.

        Asked at once, before the future is awaited (so one round trip can carry it with the request's
        admission); cancelling the future gives back a slot it took."""
        ...

    def give_back(self, upstream: str, model: str, lease: str) -> None:
        """The request ended: its slot is free (sent without waiting)."""
        ...

    def advertise(self, model: str, head: Claim | None) -> None:
        """This instance's next in line for `model` (None: nobody waits here)."""
        ...

    def on_freed(self, callback: Callable[[str], None]) -> None:
        """Call `callback(model)` whenever a slot of `model` may have freed anywhere."""
        ...

    async def busy(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int] | None:
        """Busy slots per (upstream, model), summed over instances; None when that cannot be known now."""
        ...
