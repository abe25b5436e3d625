"""Issue 15: at most one Redis round trip per request on its way to Ollama. A request's admission (every
limit of its plan) and its GPU slot go to Redis in one write, read here off the wire by a proxy."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from ollama_gate.adapters.redis_quota import _ADMIT
from ollama_gate.adapters.redis_slots import _TAKE
from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import GatewayProcess
from tests.support.services import shared_redis_url
from tests.support.stalling_proxy import StallingProxy

pytestmark = pytest.mark.redis


def sha_of(script: str) -> bytes:
    return hashlib.sha1(script.encode()).hexdigest().encode()  # what EVALSHA names it by


@pytest.fixture
def redis_proxy() -> Iterator[tuple[str, StallingProxy]]:
    url = shared_redis_url()
    with StallingProxy("127.0.0.1", urlsplit(url).port or 6379) as proxy:
        yield proxy.url_for(url), proxy


def test_a_request_asks_redis_for_its_admission_and_its_gpu_slot_in_one_write(
    tmp_path: Path, fake_ollama: FakeOllama, redis_proxy: tuple[str, StallingProxy]
) -> None:
    url, proxy = redis_proxy
    # Slots shared in Redis (the queue is on), every request limited in Redis; leases long enough that no
    # renewal falls inside the measured requests.
    env = {"REDIS_URL": url, "ANON_RATE_LIMIT": "100000/60", "SLOTS": "2", "LEASE_SECONDS": "60"}
    admit, take = sha_of(_ADMIT), sha_of(_TAKE)
    with GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env=env) as gate:
        for _ in range(2):  # Redis learns the scripts (a NOSCRIPT retry is a write of its own)
            assert gate.chat("warm").status_code == 200
        time.sleep(0.3)  # the warm-up's ends have gone out
        start = len(proxy.heard)
        for n in range(10):
            assert gate.chat(f"one after the other {n}").status_code == 200
        time.sleep(0.3)
        heard = proxy.heard[start:]

    asked_for_slots = [chunk for chunk in heard if take in chunk]
    admissions = [chunk for chunk in heard if admit in chunk]
    assert len(asked_for_slots) == 10 and len(admissions) == 10
    assert all(admit in chunk for chunk in asked_for_slots)  # each in the same write as its admission


def test_requests_refused_at_admission_give_back_the_slots_asked_for_them(
    tmp_path: Path, fake_ollama: FakeOllama, redis_proxy: tuple[str, StallingProxy]
) -> None:
    url, _ = redis_proxy
    env = {
        "REDIS_URL": url,
        "ANON_RATE_LIMIT": "3/60",
        "SLOTS": "1",
        "LEASE_SECONDS": "60",
        "ADMIN_TOKEN": "round-trips-admin",
    }
    with GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env=env) as gate:
        codes = [gate.chat(f"hi {n}").status_code for n in range(8)]
        time.sleep(0.3)  # the slots given back have gone out
        client = redis.Redis.from_url(url)
        held = sum(client.zcard(key) for key in client.scan_iter("ollama-gate:slots:*"))
        client.close()
        # The one slot is free: a leaked one would hold it for the lease's 60 s.
        after = gate.chat("the slot is free", headers={"X-Admin-Token": "round-trips-admin"})
    assert codes == [200] * 3 + [429] * 5
    assert held == 0
    assert after.status_code == 200
