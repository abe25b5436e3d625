"""A dependency whose TCP connection is open but silent: the answers that do not need it never wait for
it, and those that do fail within a stated bound.

The audit's numbers: with PostgreSQL stalled, a member whose key was cached waited 5 s and an uncached
one 9.9 s; with Redis stalled, every 429 took 0.5-1 s and the status 0.5 s. The bounds asserted here are
loose (a busy two-core machine), far below what the bugs cost.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import GatewayProcess
from tests.support.services import postgres_database, shared_redis_url
from tests.support.stalling_proxy import StallingProxy

DATABASE_TIMEOUT = 1.0
# How long a cached key is trusted before it is due for re-reading (the authenticator's default).
KEY_REVALIDATION = 5.0


def timed(call: object) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()  # type: ignore[operator]
    return response, time.monotonic() - started


@pytest.fixture
def postgres_proxy() -> Iterator[tuple[str, StallingProxy]]:
    with postgres_database() as url, StallingProxy("127.0.0.1", urlsplit(url).port or 5432) as proxy:
        yield proxy.url_for(url), proxy


@pytest.mark.postgres
def test_a_stalled_database_never_delays_a_cached_key_and_fails_an_uncached_one_in_time(
    tmp_path: Path, fake_ollama: FakeOllama, postgres_proxy: tuple[str, StallingProxy]
) -> None:
    url, proxy = postgres_proxy
    env = {"DATABASE_URL": url, "DATABASE_TIMEOUT": str(DATABASE_TIMEOUT), "MEMBER_RATE_LIMIT": "1000/60"}
    with GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env=env) as gate:
        cached, uncached = gate.create_key("cached")["key"], gate.create_key("uncached")["key"]
        assert gate.chat("warm", {"X-API-Key": cached}).status_code == 200
        time.sleep(KEY_REVALIDATION + 0.5)  # the cached key is now due for re-reading
        proxy.stall()

        member, member_seconds = timed(lambda: gate.chat("hi", {"X-API-Key": cached}))
        again, _ = timed(lambda: gate.chat("hi", {"X-API-Key": cached}))
        stranger, stranger_seconds = timed(lambda: gate.chat("hi", {"X-API-Key": uncached}))
        status, status_seconds = timed(lambda: httpx.get(gate.url + "/api/status", timeout=10))
        proxy.resume()

    assert (member.status_code, again.status_code) == (200, 200)
    assert member_seconds < 1.0, f"a cached key waited {member_seconds:.2f}s for a stalled database"
    assert stranger.status_code == 503 and stranger.json() == {"detail": "database unavailable"}
    assert stranger_seconds < DATABASE_TIMEOUT + 1.5, f"an uncached key waited {stranger_seconds:.2f}s"
    assert status.status_code == 200 and status_seconds < 2.5
    assert status.json()["dependencies"]["database"] == {"online": False}


@pytest.fixture
def redis_proxy() -> Iterator[tuple[str, StallingProxy]]:
    url = shared_redis_url()
    with StallingProxy("127.0.0.1", urlsplit(url).port or 6379) as proxy:
        yield proxy.url_for(url), proxy


@pytest.mark.redis
def test_with_a_stalled_redis_refusals_are_quick_and_the_status_answers(
    tmp_path: Path, fake_ollama: FakeOllama, redis_proxy: tuple[str, StallingProxy]
) -> None:
    url, proxy = redis_proxy
    env = {"REDIS_URL": url, "ANON_RATE_LIMIT": "2/60", "RATE_LIMIT_FALLBACK": "local"}
    with GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env=env) as gate:
        assert gate.chat("warm").status_code == 200
        proxy.stall()
        answers = [timed(lambda: gate.chat("hi")) for _ in range(12)]
        status, status_seconds = timed(lambda: httpx.get(gate.url + "/api/status", timeout=10))
        proxy.resume()

    refusals = [seconds for response, seconds in answers if response.status_code == 429]
    assert len(refusals) >= 8  # the local fallback still limits: never silently unlimited
    assert statistics.median(refusals) < 0.2, f"429s took {refusals}"
    assert status.status_code == 200 and status_seconds < 2.0
    assert status.json()["rate_limiter"]["healthy"] is False
