"""The embedded default for a single instance: nothing to share, nobody to tell."""

from __future__ import annotations

from collections.abc import Callable


class NoSharedCounters:
    def add(self, name: str) -> None:
        return None

    async def read(self, names: list[str]) -> dict[str, int] | None:
        return None


class LocalKeyEvents:
    async def publish_revoked(self, key_id: int) -> None:
        return None

    def subscribe(self, on_revoked: Callable[[int], None]) -> None:
        return None
