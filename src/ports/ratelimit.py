from __future__ import annotations

from typing import Protocol

from ollama_gate.domain.ratelimit import Decision, RateLimit


class RateLimiter(Protocol):
    """Applies the sliding-window policy to identities; atomic per decision."""

    async def acquire(self, identity: str, rate: RateLimit) -> Decision:
        """Admit or reject one request of `identity` under `rate`."""
        ...

    async def active_identities(self, rate: RateLimit) -> int:
        """Identities with at least one admission inside `rate`'s window."""
        ...
