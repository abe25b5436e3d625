"""The embedded rate limiter: exact sliding-window logs in process memory, with bounded size."""

from __future__ import annotations

from collections import deque

from ollama_gate.domain.ratelimit import Decision, RateLimit, decide
from ollama_gate.ports.clock import Clock

# How many idle identities one decision may evict: amortised O(1), and still faster than arrivals.
_EVICTIONS_PER_DECISION = 4


class InMemoryRateLimiter:
    """One log per identity and policy. Identities idle for a whole window are evicted, so a flood of
    distinct source addresses cannot grow memory beyond the identities active within one window."""

    backend = "memory"
    healthy = True

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # Per policy, identity -> admission log. Dict order is "least recently admitted first": every
        # admission moves its identity to the end, so idle identities gather at the front.
        self._logs: dict[RateLimit, dict[str, deque[float]]] = {}

    async def acquire(self, identity: str, rate: RateLimit) -> Decision:
        now = self._clock.monotonic()
        logs = self._logs.get(rate)
        if logs is None:
            logs = self._logs[rate] = {}
        self._evict_idle(logs, rate, now, _EVICTIONS_PER_DECISION)
        log = logs.get(identity)
        if log is None:
            log = deque()
        decision = decide(log, rate, now)
        if decision.admitted:
            logs.pop(identity, None)
            logs[identity] = log
        return decision

    async def active_identities(self, rate: RateLimit) -> int:
        logs = self._logs.get(rate)
        if not logs:
            return 0
        self._evict_idle(logs, rate, self._clock.monotonic(), len(logs))
        return len(logs)

    def tracked_identities(self) -> int:
        """How many logs are held in memory (for tests of the size bound)."""
        return sum(len(logs) for logs in self._logs.values())

    @staticmethod
    def _evict_idle(logs: dict[str, deque[float]], rate: RateLimit, now: float, budget: int) -> None:
        horizon = now - rate.window
        while budget and logs:
            identity = next(iter(logs))
            if logs[identity][-1] > horizon:
                return
            del logs[identity]
            budget -= 1
