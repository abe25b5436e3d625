"""The embedded limiter: exact per identity, and bounded in memory."""

from __future__ import annotations

from collections import deque

from ollama_gate.adapters.memory_quota import InMemoryQuotaLimiter
from ollama_gate.domain.plans import Window
from ollama_gate.domain.quota import Limits
from tests.unit.fakes import FakeClock

ANONYMOUS = Limits("anonymous", requests=Window(10, 60))
MEMBER = Limits("member", requests=Window(30, 60))


async def admitted_count(limiter: InMemoryQuotaLimiter, identity: str, limits: Limits, attempts: int) -> int:
    return sum([(await limiter.admit(identity, limits)).admitted for _ in range(attempts)])


async def test_admits_exactly_the_limit_then_frees_one_slot_per_leaving_request(clock: FakeClock) -> None:
    limiter = InMemoryQuotaLimiter(clock)
    for _ in range(10):
        assert (await limiter.admit("ip:10.0.0.1", ANONYMOUS)).admitted
        clock.advance(1)
    rejected = await limiter.admit("ip:10.0.0.1", ANONYMOUS)
    assert not rejected.admitted
    assert rejected.retry_after == 50  # the first admission was 10 s ago
    clock.advance(50)
    assert (await limiter.admit("ip:10.0.0.1", ANONYMOUS)).admitted
    assert not (await limiter.admit("ip:10.0.0.1", ANONYMOUS)).admitted


async def test_rejections_do_not_extend_the_wait(clock: FakeClock) -> None:
    limiter = InMemoryQuotaLimiter(clock)
    assert await admitted_count(limiter, "ip:a", ANONYMOUS, 10) == 10
    for _ in range(59):
        clock.advance(1)
        assert not (await limiter.admit("ip:a", ANONYMOUS)).admitted
    clock.advance(1)
    assert await admitted_count(limiter, "ip:a", ANONYMOUS, 20) == 10


async def test_identities_have_separate_quotas(clock: FakeClock) -> None:
    limiter = InMemoryQuotaLimiter(clock)
    assert await admitted_count(limiter, "ip:10.0.0.1", ANONYMOUS, 15) == 10
    assert await admitted_count(limiter, "ip:10.0.0.2", ANONYMOUS, 15) == 10
    assert await admitted_count(limiter, "user:abc", MEMBER, 40) == 30


async def test_a_plan_change_keeps_what_the_identity_already_used(clock: FakeClock) -> None:
    """Usage belongs to the identity, not to the plan: moving a user to a smaller plan does not give it
    a fresh window."""
    limiter = InMemoryQuotaLimiter(clock)
    assert await admitted_count(limiter, "user:abc", MEMBER, 8) == 8
    assert await admitted_count(limiter, "user:abc", ANONYMOUS, 5) == 2


async def test_active_identities_counts_those_admitted_inside_the_window(clock: FakeClock) -> None:
    limiter = InMemoryQuotaLimiter(clock)
    assert await limiter.active_identities(ANONYMOUS) == 0
    for n in range(5):
        await limiter.admit(f"ip:10.0.0.{n}", ANONYMOUS)
        clock.advance(10)
    await limiter.admit("user:abc", MEMBER)
    # Admissions at t=0,10,20,30,40; now t=50.
    assert await limiter.active_identities(ANONYMOUS) == 5
    clock.advance(15)  # t=65: the one admitted at t=0 left the window
    assert await limiter.active_identities(ANONYMOUS) == 4
    clock.advance(35)  # t=100: the last anonymous admission (t=40) leaves; the member's (t=50) stays
    assert await limiter.active_identities(ANONYMOUS) == 0
    assert await limiter.active_identities(MEMBER) == 1
    clock.advance(10)
    assert await limiter.active_identities(MEMBER) == 0


async def test_memory_stays_bounded_by_the_identities_active_in_one_window(clock: FakeClock) -> None:
    """200,000 distinct addresses, 1,000 per window: memory holds about one window's worth, never more."""
    limits = Limits("anonymous", requests=Window(10, 1.0))
    limiter = InMemoryQuotaLimiter(clock)
    step = 1 / 1024  # exact in binary, so the test's own window arithmetic matches the limiter's
    recent: deque[float] = deque()  # admission times inside the window, as the test counts them
    largest_excess = 0
    for n in range(200_000):
        clock.advance(step)
        assert (await limiter.admit(f"ip:{n}", limits)).admitted
        recent.append(clock.monotonic())
        while recent[0] <= clock.monotonic() - 1.0:
            recent.popleft()
        if n % 997 == 0:
            largest_excess = max(largest_excess, len(limiter._usage) - len(recent))
    assert len(recent) == 1024
    # Idle identities are evicted as fast as new ones arrive: at most a handful linger.
    assert 0 <= largest_excess <= 8
    assert await limiter.active_identities(limits) == len(recent)
    assert limiter.tracked_identities() == len(recent)


async def test_a_burst_is_forgotten_once_traffic_moves_on(clock: FakeClock) -> None:
    """A spray of 20,000 addresses at once, then ordinary traffic: the burst is evicted, not kept."""
    limiter = InMemoryQuotaLimiter(clock)
    for n in range(20_000):
        await limiter.admit(f"ip:spray-{n}", ANONYMOUS)
    assert len(limiter._usage) == 20_000
    clock.advance(61)
    # Each decision evicts a few idle identities; ordinary traffic from a few addresses clears the burst.
    for n in range(10_000):
        await limiter.admit(f"ip:regular-{n % 5}", ANONYMOUS)
    assert len(limiter._usage) == 5
    assert await limiter.active_identities(ANONYMOUS) == 5


async def test_an_identity_in_flight_is_never_evicted_and_its_tokens_are_charged(clock: FakeClock) -> None:
    """A stream outlasting every window still ends with its tokens charged and its lease given back."""
    limits = Limits("p", tokens=Window(100, 1.0), concurrency=1)
    limiter = InMemoryQuotaLimiter(clock)
    streaming = await limiter.admit("user:long", limits)
    clock.advance(30)
    for n in range(50):
        await limiter.admit(f"ip:other-{n}", ANONYMOUS)
    limiter.finish("user:long", streaming, 150)
    refused = await limiter.admit("user:long", limits)
    assert not refused.admitted and refused.retry_after == 1.0
