from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class SharedCounters(Protocol):
    """Counters every gateway instance adds to (rejections, for the status page)."""

    def add(self, name: str) -> None:
        """Add one, without waiting: counters are never on an answer's path, and never raise."""
        ...

    async def read(self, names: list[str]) -> dict[str, int] | None:
        """Current values within a short bound, or None when the shared store cannot answer in time."""
        ...


class KeyEvents(Protocol):
    """Tells the other instances that a key changed, so their caches drop it at once."""

    async def publish_revoked(self, key_id: int) -> None:
        """Announce a revocation; never raises (caches revalidate on their own within seconds)."""
        ...

    def subscribe(self, on_revoked: Callable[[int], None]) -> None:
        """Call `on_revoked(key_id)` for every revocation announced by any instance."""
        ...
