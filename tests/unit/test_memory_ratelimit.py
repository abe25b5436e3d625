"""The embedded rate limiter: exact per identity and policy, and bounded in memory."""

from __future__ import annotations

from collections import deque

from ollama_gate.adapters.memory_ratelimit import InMemoryRateLimiter
from ollama_gate.domain.ratelimit import RateLimit
from tests.unit.fakes import FakeClock

ANONYMOUS = RateLimit("anonymous", 10, 60)
MEMBER = RateLimit("member", 30, 60)


async def admitted_count(limiter: InMemoryRateLimiter, identity: str, rate: RateLimit, attempts: int) -> int:
    return sum([(await limiter.acquire(identity, rate)).admitted for _ in range(attempts)])


async def test_admits_exactly_the_limit_then_frees_one_slot_per_leaving_request(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(clock)
    for _ in range(10):
        assert (await limiter.acquire("ip:10.0.0.1", ANONYMOUS)).admitted
        clock.advance(1)
    rejected = await limiter.acquire("ip:10.0.0.1", ANONYMOUS)
    assert not rejected.admitted
    assert rejected.retry_after == 50  # the first admission was 10 s ago
    clock.advance(50)
    assert (await limiter.acquire("ip:10.0.0.1", ANONYMOUS)).admitted
    assert not (await limiter.acquire("ip:10.0.0.1", ANONYMOUS)).admitted


async def test_rejections_do_not_extend_the_wait(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(clock)
    assert await admitted_count(limiter, "ip:a", ANONYMOUS, 10) == 10
    for _ in range(59):
        clock.advance(1)
        assert not (await limiter.acquire("ip:a", ANONYMOUS)).admitted
    clock.advance(1)
    assert await admitted_count(limiter, "ip:a", ANONYMOUS, 20) == 10


async def test_identities_have_separate_quotas(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(clock)
    assert await admitted_count(limiter, "ip:10.0.0.1", ANONYMOUS, 15) == 10
    assert await admitted_count(limiter, "ip:10.0.0.2", ANONYMOUS, 15) == 10
    assert await admitted_count(limiter, "user:abc", MEMBER, 40) == 30


async def test_policies_have_separate_logs_for_the_same_identity(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(clock)
    assert await admitted_count(limiter, "shared", ANONYMOUS, 15) == 10
    assert await admitted_count(limiter, "shared", MEMBER, 40) == 30


async def test_active_identities_counts_those_admitted_inside_the_window(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(clock)
    assert await limiter.active_identities(ANONYMOUS) == 0
    for n in range(5):
        await limiter.acquire(f"ip:10.0.0.{n}", ANONYMOUS)
        clock.advance(10)
    await limiter.acquire("user:abc", MEMBER)
    # Admissions at t=0,10,20,30,40; now t=50.
    assert await limiter.active_identities(ANONYMOUS) == 5
    clock.advance(15)  # t=65: the one admitted at t=0 left the window
    assert await limiter.active_identities(ANONYMOUS) == 4
    clock.advance(35)  # t=100: the last anonymous admission (t=40) leaves; the member's (t=50) stays
    assert await limiter.active_identities(ANONYMOUS) == 0
    assert await limiter.active_identities(MEMBER) == 1
    clock.advance(10)
    assert await limiter.active_identities(MEMBER) == 0


async def test_a_rejected_identity_is_not_active_once_its_admissions_left(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(clock)
    await admitted_count(limiter, "ip:a", ANONYMOUS, 10)
    clock.advance(59)
    assert not (await limiter.acquire("ip:a", ANONYMOUS)).admitted
    assert await limiter.active_identities(ANONYMOUS) == 1
    clock.advance(1)
    assert await limiter.active_identities(ANONYMOUS) == 0


async def test_memory_stays_bounded_by_the_identities_active_in_one_window(clock: FakeClock) -> None:
    """200,000 distinct addresses, 1,000 per window: memory holds about one window's worth, never more."""
    rate = RateLimit("anonymous", 10, 1.0)
    limiter = InMemoryRateLimiter(clock)
    step = 1 / 1024  # exact in binary, so the test's own window arithmetic matches the limiter's
    recent: deque[float] = deque()  # admission times inside the window, as the test counts them
    largest_excess = 0
    for n in range(200_000):
        clock.advance(step)
        assert (await limiter.acquire(f"ip:{n}", rate)).admitted
        recent.append(clock.monotonic())
        while recent[0] <= clock.monotonic() - rate.window:
            recent.popleft()
        if n % 997 == 0:
            largest_excess = max(largest_excess, limiter.tracked_identities() - len(recent))
    assert len(recent) == 1024
    # Idle identities are evicted as fast as new ones arrive: at most a handful linger.
    assert 0 <= largest_excess <= 8
    assert limiter.tracked_identities() <= len(recent) + 8
    assert await limiter.active_identities(rate) == len(recent)
    assert limiter.tracked_identities() == len(recent)


async def test_a_burst_is_forgotten_once_traffic_moves_on(clock: FakeClock) -> None:
    """A spray of 20,000 addresses at once, then ordinary traffic: the burst is evicted, not kept."""
    rate = RateLimit("anonymous", 10, 60)
    limiter = InMemoryRateLimiter(clock)
    for n in range(20_000):
        await limiter.acquire(f"ip:spray-{n}", rate)
    assert limiter.tracked_identities() == 20_000
    clock.advance(61)
    # Each decision evicts a few idle identities; ordinary traffic from a few addresses clears the burst.
    for n in range(10_000):
        await limiter.acquire(f"ip:regular-{n % 5}", rate)
    assert limiter.tracked_identities() == 5
    assert await limiter.active_identities(rate) == 5
