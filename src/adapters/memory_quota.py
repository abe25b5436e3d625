"""The embedded limiter: every identity's usage in process memory, exact, with bounded size."""

from __future__ import annotations

import itertools

from ollama_gate.domain.quota import Admission, IdentityUsage, Limits, LimitState
from ollama_gate.ports.clock import Clock

# How many idle identities one decision may evict: amortised O(1), and still faster than arrivals.
_EVICTIONS_PER_DECISION = 4


class InMemoryQuotaLimiter:
    """One IdentityUsage per identity. Identities with nothing left to count are evicted, so a flood of
    distinct source addresses cannot grow memory beyond the identities active within their windows."""

    backend = "memory"
    healthy = True

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # Dict order is "least recently admitted first": each admission moves its identity to the end,
        # so the idle ones gather at the front.
        self._usage: dict[str, IdentityUsage] = {}
        # Per plan: identity -> time of its latest admission (for the status's active callers).
        self._admitted: dict[str, dict[str, float]] = {}
        self._ids = itertools.count()

    async def admit(self, identity: str, limits: Limits) -> Admission:
        now = self._clock.monotonic()
        self._evict_idle(now, _EVICTIONS_PER_DECISION)
        usage = self._usage.pop(identity, None) or IdentityUsage()
        self._usage[identity] = usage
        number = next(self._ids)
        admission = usage.admit(limits, now, f"m{number}", f"l{number}")
        if admission.admitted and limits.requests is not None:
            latest = self._admitted.setdefault(limits.plan, {})
            latest.pop(identity, None)
            latest[identity] = now
            self._forget_inactive(latest, now - limits.requests.seconds, _EVICTIONS_PER_DECISION)
        return admission

    def finish(self, identity: str, admission: Admission, tokens: int) -> None:
        usage = self._usage.get(identity)
        if usage is None:
            # Evicted while its request ran (a stream longer than every window): what it recorded has
            # left every window, so a fresh usage charges exactly what the windows should now hold.
            usage = self._usage[identity] = IdentityUsage()
        usage.finish(admission, tokens, self._clock.monotonic())

    def refund(self, identity: str, admission: Admission) -> None:
        usage = self._usage.get(identity)
        if usage is not None:
            usage.refund(admission)

    async def states(self, identity: str, limits: Limits) -> tuple[LimitState, ...]:
        usage = self._usage.get(identity) or IdentityUsage()
        return usage.states(limits, self._clock.monotonic())

    async def active_identities(self, limits: Limits) -> int:
        latest = self._admitted.get(limits.plan)
        if not latest or limits.requests is None:
            return 0
        self._forget_inactive(latest, self._clock.monotonic() - limits.requests.seconds, len(latest))
        return len(latest)

    @staticmethod
    def _forget_inactive(latest: dict[str, float], horizon: float, budget: int) -> None:
        # A few per admission, so that the dict never holds much more than one window's identities
        # (and never has to skip a long run of deleted entries at its front).
        while budget and latest:
            identity, at = next(iter(latest.items()))
            if at > horizon:
                return
            del latest[identity]
            budget -= 1

    def tracked_identities(self) -> int:
        """How many identities are held in memory (for tests of the size bound)."""
        self._evict_idle(self._clock.monotonic(), len(self._usage))
        return len(self._usage)

    def _evict_idle(self, now: float, budget: int) -> None:
        usage = self._usage
        while budget and usage:
            identity = next(iter(usage))
            if not usage[identity].idle(now):
                return
            del usage[identity]
            budget -= 1
