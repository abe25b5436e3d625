"""Scale-out on real processes: two gateways sharing one PostgreSQL and one Redis; --workers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import GatewayProcess
from tests.support.services import PrivateRedis, postgres_database, shared_redis_url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def cluster(
    tmp_path: Path, fake_ollama: FakeOllama, postgres_url: str
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    env = {
        "DATABASE_URL": postgres_url,
        "REDIS_URL": shared_redis_url(),
        "MEMBER_RATE_LIMIT": "12/60",
        "ANON_RATE_LIMIT": "1000/60",
    }
    first = GatewayProcess(tmp_path / "a", ollama_url=fake_ollama.url, env=env)
    second = GatewayProcess(tmp_path / "b", ollama_url=fake_ollama.url, env=env)
    with first, second:
        yield first, second


def create_key(gate: GatewayProcess, user_id: str) -> tuple[int, str]:
    created = gate.create_key(user_id)
    return created["id"], created["key"]


def chat(gate: GatewayProcess, key: str) -> httpx.Response:
    return gate.chat("hi", {"X-API-Key": key})


async def burst(urls: list[str], key: str, count: int) -> list[int]:
    async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=40)) as client:
        responses = await asyncio.gather(
            *(
                client.post(urls[i % len(urls)] + "/chat", json={"message": "hi"}, headers={"X-API-Key": key})
                for i in range(count)
            )
        )
    return [r.status_code for r in responses]


def test_two_instances_share_keys_quotas_revocations_and_usage(
    cluster: tuple[GatewayProcess, GatewayProcess],
) -> None:
    first, second = cluster
    key_id, key = create_key(first, "alice")

    # A key created through one instance works through the other.
    answer = chat(second, key)
    assert answer.status_code == 200 and answer.json()["user"] == "alice"

    # A burst spread across both admits exactly the member limit (12, one already used).
    statuses = asyncio.run(burst([first.url, second.url], key, 60))
    assert statuses.count(200) == 11 and statuses.count(429) == 49

    # Rejections are counted cluster-wide: both instances report the same totals (once each has handed
    # its counts to Redis: that happens behind the answers, about every second).
    totals: list[int] = []
    for _ in range(50):
        totals = [g.status()["usage"]["rejected_rate_limited"] for g in cluster]
        if totals == [49, 49]:
            break
        time.sleep(0.1)
    assert totals == [49, 49]

    # Usage rows from both appear on either (after the writers' flush interval).
    rows = [g.usage_rows(12) for g in cluster]
    assert len(rows[0]) == len(rows[1]) == 12
    assert rows[0] == rows[1]

    # Revoked through one, refused by the other within a second.
    other_id, other_key = create_key(second, "bob")
    assert chat(first, other_key).status_code == 200
    assert httpx.delete(f"{second.url}/api/keys/{other_id}", timeout=10).status_code == 200
    deadline = time.monotonic() + 1.0
    refused = False
    while time.monotonic() < deadline and not refused:
        refused = chat(first, other_key).status_code == 401
    assert refused, "the other instance still accepted a revoked key after one second"
    assert key_id != other_id


def test_workers_without_redis_refuse_to_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ollama_gate", "serve", "--workers", "2"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "OLLAMA_GATE_REDIS_URL" in result.stderr and "limits" in result.stderr
    assert "Traceback" not in result.stderr


def test_several_workers_share_one_limit(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    gate = GatewayProcess(
        tmp_path,
        ollama_url=fake_ollama.url,
        env={"REDIS_URL": shared_redis_url(), "ANON_RATE_LIMIT": "15/60"},
        args=["--workers", "2"],
    )
    with gate:
        statuses = asyncio.run(burst_anonymous(gate.url, 80))
    assert statuses.count(200) == 15 and statuses.count(429) == 65


async def burst_anonymous(url: str, count: int) -> list[int]:
    async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=20)) as client:
        responses = await asyncio.gather(
            *(client.post(url + "/chat", json={"message": "hi"}) for _ in range(count))
        )
    return [r.status_code for r in responses]


def eventually_admitted(url: str, attempts: int = 50) -> bool:
    for _ in range(attempts):
        if httpx.post(url + "/chat", json={"message": "hi"}, timeout=10).status_code == 200:
            return True
        time.sleep(0.1)
    return False


def test_redis_outage_is_visible_and_never_unlimited(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    redis_server = PrivateRedis(tmp_path).start()
    try:
        local = GatewayProcess(
            tmp_path / "local",
            ollama_url=fake_ollama.url,
            env={"REDIS_URL": redis_server.url, "ANON_RATE_LIMIT": "3/60"},
        )
        deny = GatewayProcess(
            tmp_path / "deny",
            ollama_url=fake_ollama.url,
            env={"REDIS_URL": redis_server.url, "RATE_LIMIT_FALLBACK": "deny"},
        )
        with local, deny:
            assert httpx.post(local.url + "/chat", json={"message": "hi"}, timeout=10).status_code == 200
            redis_server.stop()
            statuses = [
                httpx.post(local.url + "/chat", json={"message": "hi"}, timeout=10).status_code
                for _ in range(5)
            ]
            assert statuses == [200, 200, 200, 429, 429]
            status = httpx.get(local.url + "/api/status", timeout=10).json()
            assert status["rate_limiter"] == {"backend": "redis", "healthy": False}
            refused = httpx.post(deny.url + "/chat", json={"message": "hi"}, timeout=10)
            assert refused.status_code == 503 and "rate limiter" in refused.json()["detail"]

            redis_server.start()
            # Recovery by itself: the limiter retries Redis at most once a second while it is down.
            # Redis restarted empty (nothing persisted), so its window admits again once it is used.
            assert eventually_admitted(deny.url) and eventually_admitted(local.url)
            assert httpx.get(local.url + "/api/status", timeout=10).json()["rate_limiter"] == {
                "backend": "redis",
                "healthy": True,
            }
    finally:
        redis_server.stop()
