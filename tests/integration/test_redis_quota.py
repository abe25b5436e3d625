"""The Redis limiter against a real Redis: exactness across instances for every kind of limit, leases
that free themselves, expiry, fallback, recovery."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from ollama_gate.adapters.memory_quota import InMemoryQuotaLimiter
from ollama_gate.adapters.redis_cluster import RedisCounters, RedisKeyEvents
from ollama_gate.adapters.redis_quota import RedisQuotaLimiter
from ollama_gate.adapters.system_clock import SystemClock
from ollama_gate.domain.errors import LimiterUnavailable
from ollama_gate.domain.plans import Window
from ollama_gate.domain.quota import LimitKind, Limits
from tests.support.services import PrivateRedis, shared_redis_url


def client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


def patient_client(url: str) -> aioredis.Redis:
    # For bursts that open a connection per concurrent call: what they test is exactness, and on a busy
    # two-core machine opening a hundred connections at once can take longer than the production 0.5 s.
    return aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def is_healthy(limiter: RedisQuotaLimiter) -> bool:
    # A call, not an attribute: mypy would otherwise keep the value it narrowed before the outage.
    healthy: bool = limiter.healthy
    return healthy


def requests(limit: int, seconds: float, plan: str = "member") -> Limits:
    return Limits(plan, requests=Window(limit, seconds))


async def started(limiter: RedisQuotaLimiter) -> RedisQuotaLimiter:
    await limiter.start()
    return limiter


async def settled(limiter: RedisQuotaLimiter) -> None:
    """Let the background sender deliver the ends of requests (a few loop turns and a round trip)."""
    for _ in range(50):
        if not limiter._ends:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_burst_from_several_connections_admits_exactly_the_limit() -> None:
    url = shared_redis_url()
    limits = requests(25, 60)
    limiters = [RedisQuotaLimiter(patient_client(url), SystemClock(), fallback=None) for _ in range(3)]
    try:
        decisions = await asyncio.gather(*(limiters[i % 3].admit("user:alice", limits) for i in range(300)))
        assert sum(d.admitted for d in decisions) == 25
        rejected = [d for d in decisions if not d.admitted]
        assert all(d.states[0].remaining == 0 and 0 < d.retry_after <= 60 for d in rejected)
        # Another identity has its own window.
        assert (await limiters[0].admit("user:bob", limits)).states[0].remaining == 24
    finally:
        for limiter in limiters:
            await limiter.close()


async def test_tokens_charged_on_one_instance_count_on_the_other() -> None:
    url = shared_redis_url()
    limits = Limits("gold", tokens=Window(1000, 60), daily=Window(5000, 86_400))
    first = await started(RedisQuotaLimiter(client(url), SystemClock(), None))
    second = await started(RedisQuotaLimiter(client(url), SystemClock(), None))
    try:
        admission = await first.admit("user:carol", limits)
        first.finish("user:carol", admission, 700)
        await settled(first)
        seen = await second.admit("user:carol", limits)
        assert seen.admitted and seen.state(LimitKind.TOKENS).remaining == 300  # type: ignore[union-attr]
        assert seen.state(LimitKind.DAILY_TOKENS).remaining == 4300  # type: ignore[union-attr]
        second.finish("user:carol", seen, 400)
        await settled(second)
        refused = await first.admit("user:carol", limits)
        assert not refused.admitted and refused.refused_by is LimitKind.TOKENS
        assert 55 < refused.retry_after <= 60  # when the first charge of 700 leaves the window
    finally:
        await first.close()
        await second.close()


async def test_concurrency_leases_are_shared_and_given_back() -> None:
    url = shared_redis_url()
    limits = Limits("pair", concurrency=2)
    first = await started(RedisQuotaLimiter(client(url), SystemClock(), None))
    second = await started(RedisQuotaLimiter(client(url), SystemClock(), None))
    try:
        held = [await first.admit("key:9", limits), await second.admit("key:9", limits)]
        assert all(a.admitted for a in held)
        refused = await first.admit("key:9", limits)
        assert (
            not refused.admitted and refused.refused_by is LimitKind.CONCURRENCY and refused.retry_after == 1
        )
        second.finish("key:9", held[1], 0)
        await settled(second)
        assert (await first.admit("key:9", limits)).admitted
    finally:
        await first.close()
        await second.close()


async def test_a_lease_held_by_an_instance_that_died_frees_itself() -> None:
    """The holder never ends its request (killed): its lease expires `lease_ttl` after its last renewal."""
    url = shared_redis_url()
    limits = Limits("solo", concurrency=1)
    dying = RedisQuotaLimiter(client(url), SystemClock(), None, lease_ttl=0.6)
    survivor = RedisQuotaLimiter(client(url), SystemClock(), None, lease_ttl=0.6)
    try:
        assert (await dying.admit("user:dora", limits)).admitted
        assert not (await survivor.admit("user:dora", limits)).admitted
        await asyncio.sleep(0.7)  # no renewal: the holder is gone
        assert (await survivor.admit("user:dora", limits)).admitted
    finally:
        await dying.close()
        await survivor.close()


async def test_a_live_request_keeps_its_lease_past_the_ttl() -> None:
    url = shared_redis_url()
    limits = Limits("solo", concurrency=1)
    holder = await started(RedisQuotaLimiter(client(url), SystemClock(), None, lease_ttl=0.6))
    other = RedisQuotaLimiter(client(url), SystemClock(), None, lease_ttl=0.6)
    try:
        assert (await holder.admit("user:eve", limits)).admitted
        await asyncio.sleep(1.5)  # renewed every 0.2 s
        assert not (await other.admit("user:eve", limits)).admitted
    finally:
        await holder.close()
        await other.close()


async def test_a_refund_takes_back_the_admission() -> None:
    url = shared_redis_url()
    limits = Limits("one", requests=Window(1, 60), concurrency=1)
    limiter = await started(RedisQuotaLimiter(client(url), SystemClock(), None))
    try:
        admission = await limiter.admit("ip:10.9.9.9", limits)
        assert not (await limiter.admit("ip:10.9.9.9", limits)).admitted
        limiter.refund("ip:10.9.9.9", admission)
        await settled(limiter)
        assert (await limiter.admit("ip:10.9.9.9", limits)).admitted
    finally:
        await limiter.close()


async def test_windows_slide_and_keys_expire_on_their_own() -> None:
    url = shared_redis_url()
    limits = requests(2, 0.3, "anonymous")
    raw = client(url)
    limiter = RedisQuotaLimiter(client(url), SystemClock(), fallback=None)
    try:
        assert [(await limiter.admit("ip:10.0.0.1", limits)).admitted for _ in range(3)] == [
            True,
            True,
            False,
        ]
        keys = [k async for k in raw.scan_iter("ollama-gate:q:ip:10.0.0.1:*")]
        ttls = [await raw.pttl(k) for k in keys]
        assert keys and all(0 < ttl <= 300 for ttl in ttls)
        assert await limiter.active_identities(limits) == 1
        await asyncio.sleep(0.35)
        assert (await limiter.admit("ip:10.0.0.1", limits)).admitted
        await asyncio.sleep(0.35)
        assert await limiter.active_identities(limits) == 0
        assert [k async for k in raw.scan_iter("ollama-gate:q:ip:10.0.0.1:*")] == []
    finally:
        await limiter.close()
        await raw.aclose()


async def test_redis_outage_falls_back_to_the_local_limiter_and_recovers(private_redis: PrivateRedis) -> None:
    limits = requests(3, 60, "anonymous")
    clock = SystemClock()
    limiter = RedisQuotaLimiter(
        client(private_redis.url), clock, InMemoryQuotaLimiter(clock), retry_interval=0.1
    )
    try:
        assert (await limiter.admit("ip:a", limits)).admitted
        assert is_healthy(limiter)
        private_redis.stop()
        during = [await limiter.admit("ip:a", limits) for _ in range(5)]
        assert not is_healthy(limiter)
        # Still limited (never silently unlimited): the local limiter admits its own 3.
        assert [d.admitted for d in during] == [True, True, True, False, False]
        private_redis.start()
        await asyncio.sleep(0.15)
        after = await limiter.admit("ip:a", limits)
        # The restarted Redis kept nothing (no persistence here): its window starts afresh.
        assert is_healthy(limiter) and after.admitted and after.states[0].remaining == 2
    finally:
        await limiter.close()


async def test_redis_outage_with_deny_refuses(private_redis: PrivateRedis) -> None:
    limiter = RedisQuotaLimiter(client(private_redis.url), SystemClock(), fallback=None)
    try:
        private_redis.stop()
        with pytest.raises(LimiterUnavailable):
            await limiter.admit("ip:a", requests(3, 60, "anonymous"))
        assert not limiter.healthy
    finally:
        await limiter.close()


async def test_counters_and_revocations_are_shared() -> None:
    url = shared_redis_url()
    first, second = client(url), client(url)
    counters_a, counters_b = RedisCounters(first), RedisCounters(second)
    events_a, events_b = RedisKeyEvents(first), RedisKeyEvents(second)
    received: list[int] = []
    events_b.subscribe(received.append)
    await events_b.start()
    try:
        counters_a.add("rejected_rate_limited")
        counters_b.add("rejected_rate_limited")
        # Counted before they are written: a rejection never waits for Redis.
        assert await counters_a.read(["rejected_rate_limited"]) == {"rejected_rate_limited": 1}
        await counters_a.flush()
        await counters_b.flush()
        assert await counters_a.read(["rejected_rate_limited", "rejected_unauthorized"]) == {
            "rejected_rate_limited": 2,
            "rejected_unauthorized": 0,
        }
        await asyncio.wait_for(events_b.listening.wait(), 5)
        await events_a.publish_revoked(42)
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.01)
        assert received == [42]
    finally:
        await events_b.close()
        await first.aclose()
        await second.aclose()
