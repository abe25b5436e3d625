"""The Redis rate limiter against a real Redis: exactness, expiry, fallback, recovery."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from ollama_gate.adapters.memory_ratelimit import InMemoryRateLimiter
from ollama_gate.adapters.redis_cluster import RedisCounters, RedisKeyEvents
from ollama_gate.adapters.redis_ratelimit import RedisRateLimiter
from ollama_gate.adapters.system_clock import SystemClock
from ollama_gate.domain.errors import LimiterUnavailable
from ollama_gate.domain.ratelimit import RateLimit
from tests.support.services import PrivateRedis, shared_redis_url


def client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


def patient_client(url: str) -> aioredis.Redis:
    # For bursts that open a connection per concurrent call: what they test is exactness, and on a busy
    # two-core machine opening a hundred connections at once can take longer than the production 0.5 s.
    return aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def is_healthy(limiter: RedisRateLimiter) -> bool:
    # A call, not an attribute: mypy would otherwise keep the value it narrowed before the outage.
    return limiter.healthy


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_burst_from_several_connections_admits_exactly_the_limit() -> None:
    url = shared_redis_url()
    rate = RateLimit("member", 25, 60)
    limiters = [RedisRateLimiter(patient_client(url), SystemClock(), fallback=None) for _ in range(3)]
    try:
        decisions = await asyncio.gather(*(limiters[i % 3].acquire("user:alice", rate) for i in range(300)))
        assert sum(d.admitted for d in decisions) == 25
        rejected = [d for d in decisions if not d.admitted]
        assert all(d.remaining == 0 and 0 < d.retry_after <= 60 for d in rejected)
        # Another identity has its own window.
        assert (await limiters[0].acquire("user:bob", rate)).remaining == 24
    finally:
        for limiter in limiters:
            await limiter.close()


async def test_windows_slide_and_keys_expire_on_their_own() -> None:
    url = shared_redis_url()
    rate = RateLimit("anonymous", 2, 0.3)
    raw = client(url)
    limiter = RedisRateLimiter(client(url), SystemClock(), fallback=None)
    try:
        assert [(await limiter.acquire("ip:10.0.0.1", rate)).admitted for _ in range(3)] == [
            True,
            True,
            False,
        ]
        keys = [k async for k in raw.scan_iter("ollama-gate:rl:anonymous:*")]
        ttls = [await raw.pttl(k) for k in keys]
        assert keys and all(0 < ttl <= 300 for ttl in ttls)
        assert await limiter.active_identities(rate) == 1
        await asyncio.sleep(0.35)
        assert (await limiter.acquire("ip:10.0.0.1", rate)).admitted
        await asyncio.sleep(0.35)
        assert await limiter.active_identities(rate) == 0
        assert [k async for k in raw.scan_iter("ollama-gate:rl:anonymous:*log*")] == []
    finally:
        await limiter.close()
        await raw.aclose()


async def test_redis_outage_falls_back_to_the_local_limiter_and_recovers(private_redis: PrivateRedis) -> None:
    rate = RateLimit("anonymous", 3, 60)
    clock = SystemClock()
    limiter = RedisRateLimiter(
        client(private_redis.url), clock, InMemoryRateLimiter(clock), retry_interval=0.1
    )
    try:
        assert (await limiter.acquire("ip:a", rate)).admitted
        assert is_healthy(limiter)
        private_redis.stop()
        during = [await limiter.acquire("ip:a", rate) for _ in range(5)]
        assert not is_healthy(limiter)
        # Still limited (never silently unlimited): the local limiter admits its own 3.
        assert [d.admitted for d in during] == [True, True, True, False, False]
        private_redis.start()
        await asyncio.sleep(0.15)
        after = await limiter.acquire("ip:a", rate)
        # The restarted Redis kept nothing (no persistence here): its window starts afresh.
        assert is_healthy(limiter) and after.admitted and after.remaining == 2
    finally:
        await limiter.close()


async def test_redis_outage_with_deny_refuses(private_redis: PrivateRedis) -> None:
    limiter = RedisRateLimiter(client(private_redis.url), SystemClock(), fallback=None)
    try:
        private_redis.stop()
        with pytest.raises(LimiterUnavailable):
            await limiter.acquire("ip:a", RateLimit("anonymous", 3, 60))
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
