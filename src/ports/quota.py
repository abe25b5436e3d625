from __future__ import annotations

from typing import Protocol

from ollama_gate.domain.quota import Admission, Limits, LimitState


class QuotaLimiter(Protocol):
    """Enforces plans' limits per identity (see domain/quota.py), atomically per decision.

    `finish` and `refund` never make the caller wait: the end of a request is off its answer's path.
    """

    backend: str
    """Where the counts live: "memory" or "redis"."""

    @property
    def healthy(self) -> bool:
        """False while the backend is unreachable (decisions then come from a fallback, or fail)."""
        ...

    async def admit(self, identity: str, limits: Limits) -> Admission:
        """Admit or refuse one request of `identity` under every limit of `limits` at once."""
        ...

    def finish(self, identity: str, admission: Admission, tokens: int) -> None:
        """An admitted request ended having used `tokens`: charge them, give its lease back."""
        ...

    def refund(self, identity: str, admission: Admission) -> None:
        """An admitted request never reached the GPU: take back what its admission recorded."""
        ...

    async def states(self, identity: str, limits: Limits) -> tuple[LimitState, ...]:
        """What `identity` has left under `limits`, admitting nothing."""
        ...

    async def active_identities(self, limits: Limits) -> int:
        """Identities admitted under `limits` within its requests window."""
        ...
