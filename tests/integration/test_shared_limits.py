"""Limits shared over Redis stay exact under a burst far larger than the Redis connection pool.

The audit's reproduction: 300 concurrent requests of one member with a 30/60 quota, spread over two
gateways on one Redis, admitted 90 (redis-py's default pool raised when full, and the limiter took that
for an outage and fell back to its local limiter); with `deny` it gave 200+ spurious 503s.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import GatewayProcess
from tests.support.services import postgres_database, shared_redis_url

BURST = 300
QUOTA = 30


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


def environment(postgres_url: str, fallback: str) -> dict[str, str]:
    return {
        "DATABASE_URL": postgres_url,
        "REDIS_URL": shared_redis_url(),
        "RATE_LIMIT_FALLBACK": fallback,
        "MEMBER_RATE_LIMIT": f"{QUOTA}/60",
        "ANON_RATE_LIMIT": "100000/60",
        # The GPU queue must not turn the burst away itself (its per-identity cap): this is about the quota.
        "MAX_QUEUED_PER_IDENTITY": "100000",
        "MAX_QUEUE": "100000",
    }


async def burst(urls: list[str], key: str) -> Counter[int]:
    """BURST requests at once (one connection each), spread over `urls`; the tally of their statuses."""
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        answers = await asyncio.gather(
            *(
                client.post(urls[n % len(urls)] + "/chat", json={"message": "hi"}, headers={"X-API-Key": key})
                for n in range(BURST)
            )
        )
    return Counter(answer.status_code for answer in answers)


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.parametrize("fallback", ["local", "deny"])
def test_two_instances_admit_exactly_the_quota_of_a_burst(
    tmp_path: Path, fake_ollama: FakeOllama, postgres_url: str, fallback: str
) -> None:
    env = environment(postgres_url, fallback)
    first = GatewayProcess(tmp_path / "a", ollama_url=fake_ollama.url, env=env)
    second = GatewayProcess(tmp_path / "b", ollama_url=fake_ollama.url, env=env)
    with first, second:
        key = first.create_key("burst-user")["key"]
        statuses = asyncio.run(burst([first.url, second.url], key))
        healthy = [gate.status()["rate_limiter"]["healthy"] for gate in (first, second)]

    assert statuses == Counter({200: QUOTA, 429: BURST - QUOTA})  # no 503, no over-admission
    assert healthy == [True, True]  # a full pool is load, never an outage


@pytest.mark.redis
@pytest.mark.postgres
def test_workers_of_one_instance_admit_exactly_the_quota_of_a_burst(
    tmp_path: Path, fake_ollama: FakeOllama, postgres_url: str
) -> None:
    env = environment(postgres_url, "local")
    with GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env=env, args=["--workers", "2"]) as gate:
        key = gate.create_key("burst-user")["key"]
        statuses = asyncio.run(burst([gate.url], key))

    assert statuses == Counter({200: QUOTA, 429: BURST - QUOTA})
