from __future__ import annotations

from typing import Protocol

from ollama_gate.domain.ratelimit import Decision, RateLimit


class RateLimiter(Protocol):
    """Applies the sliding-window policy to identities; atomic per decision."""

    backend: str
    """Where the windows live: "memory" or "redis"."""

    @property
    def healthy(self) -> bool:
        """False while the backend is unreachable (decisions then come from a fallback, or fail)."""
        ...

    async def acquire(self, identity: str, rate: RateLimit) -> Decision:
        """Admit or reject one request of `identity` under `rate`."""
        ...

    async def active_identities(self, rate: RateLimit) -> int:
        """Identities with at least one admission inside `rate`'s window."""
        ...
