"""The arithmetic of a plan's limits for one identity: exact sliding windows, charged tokens, leases.

- requests: admitted iff fewer than N admissions lie in (now - W, now]; a refused request counts nothing.
- tokens (and daily tokens, W = 24 h): admitted iff fewer than N tokens were charged in (now - W, now].
  Tokens are charged when a request ends, so the last admitted request may overshoot; the retry time
  then says when enough charges have left the window to admit again.
- concurrency: admitted iff fewer than N requests hold a lease; the lease is given back when the request
  ends (or, shared across instances, expires when its holder stops renewing it).

All limits are decided together: a request is admitted only when every limit has room, and then each
records it; when one is full, none records anything. Time comes in as seconds; no clock here.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum

from ollama_gate.domain.errors import GatewayError
from ollama_gate.domain.immutable import immutable
from ollama_gate.domain.plans import Plan, Window

# A refused concurrent request may retry this soon: a slot frees whenever any request ends.
CONCURRENCY_RETRY_AFTER = 1.0


class LimitKind(StrEnum):
    REQUESTS = "requests"
    TOKENS = "tokens"
    DAILY_TOKENS = "daily_tokens"
    CONCURRENCY = "concurrency"


@immutable
class Limits:
    """The counted part of a plan (named `plan`), as a limiter enforces it for one identity."""

    plan: str
    requests: Window | None = None
    tokens: Window | None = None
    daily: Window | None = None
    concurrency: int | None = None

    @classmethod
    def of(cls, plan: Plan) -> Limits:
        return cls(plan.name, plan.requests, plan.tokens, plan.daily_window, plan.concurrency)

    @property
    def empty(self) -> bool:
        return (
            self.requests is None and self.tokens is None and self.daily is None and self.concurrency is None
        )

    @property
    def needs_finish(self) -> bool:
        """Whether the end of a request must be reported (tokens to charge, a lease to give back)."""
        return self.tokens is not None or self.daily is not None or self.concurrency is not None


@immutable
class LimitState:
    """One limit after a decision: what the RateLimit headers and a 429 say."""

    kind: LimitKind
    limit: int
    window: float | None  # None for concurrency
    remaining: int
    reset_after: float  # seconds until room frees (0: there is room and nothing to wait for)


@immutable
class Admission:
    """A decision. When admitted, `mark` and `lease` identify what it recorded, to finish or refund it."""

    admitted: bool
    limits: Limits
    states: tuple[LimitState, ...]
    refused_by: LimitKind | None = None
    retry_after: float = 0.0
    mark: str = ""
    lease: str | None = None
    via: str = ""  # the limiter that decided (a shared one's fallback finishes its own admissions)

    def state(self, kind: LimitKind) -> LimitState | None:
        return next((state for state in self.states if state.kind is kind), None)


class ChargeLog:
    """Charges (time, amount) in time order with their running total."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def trim(self, now: float, seconds: float) -> None:
        horizon = now - seconds
        entries = self.entries
        while entries and entries[0][0] <= horizon:
            self.total -= entries.popleft()[1]

    def charge(self, now: float, amount: int) -> None:
        if amount > 0:
            self.entries.append((now, amount))
            self.total += amount

    def room_after(self, now: float, seconds: float, limit: int) -> float:
        """Seconds until the total in the window falls below `limit` (0 when it already is)."""
        running = self.total
        if running < limit:
            return 0.0
        for at, amount in self.entries:
            running -= amount
            if running < limit:
                return max(0.0, at + seconds - now)
        return 0.0

    def oldest_leaves_after(self, now: float, seconds: float) -> float:
        return max(0.0, self.entries[0][0] + seconds - now) if self.entries else 0.0


class IdentityUsage:
    """What one identity has used: its admissions, charged tokens and leases (trimmed as time passes)."""

    __slots__ = ("admissions", "daily", "last_seen", "leases", "retention", "tokens")

    def __init__(self) -> None:
        self.admissions: deque[tuple[float, str]] = deque()
        self.tokens = ChargeLog()
        self.daily = ChargeLog()
        self.leases: set[str] = set()
        self.last_seen = 0.0
        self.retention = 0.0  # the longest window that counts anything recorded here

    def _trim(self, limits: Limits, now: float) -> None:
        if limits.requests is not None:
            horizon = now - limits.requests.seconds
            while self.admissions and self.admissions[0][0] <= horizon:
                self.admissions.popleft()
        if limits.tokens is not None:
            self.tokens.trim(now, limits.tokens.seconds)
        if limits.daily is not None:
            self.daily.trim(now, limits.daily.seconds)

    def states(self, limits: Limits, now: float) -> tuple[LimitState, ...]:
        """Every limit's state now, without admitting anything."""
        self._trim(limits, now)
        states = []
        requests = limits.requests
        if requests is not None:
            reset = self.admissions[0][0] + requests.seconds - now if self.admissions else 0.0
            remaining = max(0, requests.limit - len(self.admissions))
            states.append(LimitState(LimitKind.REQUESTS, requests.limit, requests.seconds, remaining, reset))
        charged: tuple[tuple[LimitKind, ChargeLog, Window | None], ...] = (
            (LimitKind.TOKENS, self.tokens, limits.tokens),
            (LimitKind.DAILY_TOKENS, self.daily, limits.daily),
        )
        for kind, log, window in charged:
            if window is not None:
                remaining = max(0, window.limit - log.total)
                reset = (
                    log.room_after(now, window.seconds, window.limit)
                    if remaining == 0
                    else log.oldest_leaves_after(now, window.seconds)
                )
                states.append(LimitState(kind, window.limit, window.seconds, remaining, reset))
        if limits.concurrency is not None:
            remaining = max(0, limits.concurrency - len(self.leases))
            reset = 0.0 if remaining else CONCURRENCY_RETRY_AFTER
            states.append(LimitState(LimitKind.CONCURRENCY, limits.concurrency, None, remaining, reset))
        return tuple(states)

    def admit(self, limits: Limits, now: float, mark: str, lease: str) -> Admission:
        """Admit iff every limit has room; then record the admission (and take the lease)."""
        self.last_seen = now
        self.retention = max(self.retention, longest_window(limits))
        before = self.states(limits, now)
        full = [state for state in before if state.remaining <= 0]
        if full:
            return Admission(False, limits, before, full[0].kind, max(state.reset_after for state in full))
        taken = None
        if limits.requests is not None:
            self.admissions.append((now, mark))
        if limits.concurrency is not None:
            self.leases.add(lease)
            taken = lease
        return Admission(
            True, limits, tuple(_after_admission(state, now) for state in before), mark=mark, lease=taken
        )

    def finish(self, admission: Admission, tokens: int, now: float) -> None:
        """The admitted request ended having used `tokens`: charge them, give the lease back."""
        self.last_seen = now
        self.retention = max(self.retention, longest_window(admission.limits))
        if admission.lease is not None:
            self.leases.discard(admission.lease)
        if admission.limits.tokens is not None:
            self.tokens.charge(now, tokens)
        if admission.limits.daily is not None:
            self.daily.charge(now, tokens)

    def refund(self, admission: Admission) -> None:
        """The admitted request never reached the GPU (a queue bound refused it): it consumes nothing."""
        if admission.lease is not None:
            self.leases.discard(admission.lease)
        for index, (_, mark) in enumerate(self.admissions):
            if mark == admission.mark:
                del self.admissions[index]
                break

    def idle(self, now: float) -> bool:
        """Nothing recorded that any limit could still count."""
        return not self.leases and now - self.last_seen >= self.retention


def _after_admission(state: LimitState, now: float) -> LimitState:
    """A limit's state once an admission was recorded (the same as computing it again, without the work):
    one less request or lease; a request window that was empty now resets a window from now."""
    if state.kind is LimitKind.REQUESTS:
        reset = state.reset_after if state.remaining < state.limit else (state.window or 0.0)
        return LimitState(state.kind, state.limit, state.window, state.remaining - 1, reset)
    if state.kind is LimitKind.CONCURRENCY:
        left = state.remaining - 1
        return LimitState(state.kind, state.limit, None, left, 0.0 if left else CONCURRENCY_RETRY_AFTER)
    return state


def longest_window(limits: Limits) -> float:
    return max(
        (w.seconds for w in (limits.requests, limits.tokens, limits.daily) if w is not None), default=0.0
    )


class QuotaExceeded(GatewayError):
    """One of the caller's plan limits is used up (429); `admission` says which, and for how long."""

    status = 429

    def __init__(self, admission: Admission) -> None:
        super().__init__(refusal_detail(admission))
        self.admission = admission


def refusal_detail(admission: Admission) -> str:
    """Which limit refused the request, in words a client can act on."""
    plan, kind = admission.limits.plan, admission.refused_by
    state = admission.state(kind) if kind is not None else None
    limit = state.limit if state is not None else 0
    window = f"{state.window:g}" if state is not None and state.window is not None else ""
    if kind is LimitKind.TOKENS:
        return f"token quota exceeded: {limit} tokens per {window}s on plan '{plan}'"
    if kind is LimitKind.DAILY_TOKENS:
        return f"daily token quota exceeded: {limit} tokens per 24h on plan '{plan}'"
    if kind is LimitKind.CONCURRENCY:
        return f"too many concurrent requests: at most {limit} at once on plan '{plan}'"
    return f"rate limit exceeded: {limit} requests per {window}s for {plan} clients"
