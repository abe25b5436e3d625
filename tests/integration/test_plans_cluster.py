"""Plans across instances: two gateways on one PostgreSQL and one Redis see one plan, share every limit,
and a killed instance's concurrency lease frees itself."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import gateway_pair
from tests.support.fake_ollama_openai import FakeOllamaServer
from tests.support.gateway import GatewayProcess

MODEL = "smollm:latest"
ADMIN_TOKEN = "cluster-admin-token"
ADMIN = {"X-Admin-Token": ADMIN_TOKEN}
LEASE_SECONDS = 2.0

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
def upstream() -> Iterator[FakeOllamaServer]:
    with FakeOllamaServer() as server:
        yield server


@pytest.fixture
def pair(tmp_path: Path, upstream: FakeOllamaServer) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    env = {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "MEMBER_RATE_LIMIT": "100000/60",
        "ANON_RATE_LIMIT": "100000/60",
        "LEASE_SECONDS": str(LEASE_SECONDS),
    }
    with gateway_pair(tmp_path, upstream.url, env) as gateways:
        yield gateways


def member(gates: tuple[GatewayProcess, ...], user: str, plan: str, **fields: object) -> dict[str, str]:
    """A member on a new plan, made through the first gateway, once every gateway applies that plan."""
    first = gates[0]
    assert httpx.put(f"{first.url}/api/plans/{plan}", json=fields, headers=ADMIN).status_code == 200
    assert httpx.put(f"{first.url}/api/users/{user}", json={"plan": plan}, headers=ADMIN).status_code == 200
    headers = {"X-API-Key": first.create_key(user, headers=ADMIN)["key"]}
    for gate in gates:
        deadline = time.monotonic() + 1.0
        while httpx.get(gate.url + "/api/me", headers=headers).json()["plan"]["name"] != plan:
            assert time.monotonic() < deadline, f"{gate.url} never applied the new plan"
            time.sleep(0.05)
    return headers


def generate(gate: GatewayProcess, headers: dict[str, str], prompt: str = "hi") -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "stream": False}
    return httpx.post(gate.url + "/api/generate", json=body, headers=headers, timeout=10)


def test_a_plan_change_reaches_the_other_instance_within_a_second(
    pair: tuple[GatewayProcess, GatewayProcess],
) -> None:
    first, second = pair
    headers = member(pair, "alice", "gold", requests="1000/60")
    assert generate(second, headers).status_code == 200  # the key and its plan, seen by the other
    changed = httpx.patch(f"{first.url}/api/plans/gold", json={"models": ["qwen*"]}, headers=ADMIN)
    started = time.monotonic()
    assert changed.status_code == 200
    while generate(second, headers).status_code != 403:
        assert time.monotonic() - started < 1.0, "the second instance still follows the old plan"
        time.sleep(0.05)


def test_two_instances_share_the_token_window(pair: tuple[GatewayProcess, GatewayProcess]) -> None:
    first, second = pair
    headers = member(pair, "bob", "tokens-30", tokens="30/60")
    spent = 0
    turn = 0
    while True:
        answer = generate((first, second)[turn % 2], headers, "one two three four five six")
        turn += 1
        if answer.status_code == 429:
            break
        assert answer.status_code == 200, answer.text
        spent += answer.json()["prompt_eval_count"] + answer.json()["eval_count"]
        time.sleep(0.1)  # the charge lands behind the answer
        assert turn < 10
    assert spent >= 30  # refused only once the window held 30 tokens, whichever instance charged them
    assert spent - 30 < 20  # and not long after: at most the last request's overshoot


def test_two_instances_share_the_concurrency_limit(
    pair: tuple[GatewayProcess, GatewayProcess], upstream: FakeOllamaServer
) -> None:
    first, second = pair
    headers = member(pair, "carol", "pair", concurrency=2)

    async def burst() -> Counter[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        (first, second)[n % 2].url + "/api/generate",
                        json={"model": MODEL, "prompt": f"!wait=1 carol {n}", "stream": False},
                        headers=headers,
                    )
                    for n in range(10)
                )
            )
        return Counter(answer.status_code for answer in answers)

    assert asyncio.run(burst()) == Counter({200: 2, 429: 8})


def test_a_lease_held_by_a_killed_instance_frees_itself(
    pair: tuple[GatewayProcess, GatewayProcess], upstream: FakeOllamaServer
) -> None:
    first, second = pair
    headers = member(pair, "dave", "solo", concurrency=1)

    async def hold_then_kill() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            holding = asyncio.create_task(
                client.post(
                    first.url + "/api/generate",
                    json={"model": MODEL, "prompt": "!hang dave", "stream": False},
                    headers=headers,
                )
            )
            while "!hang dave" not in upstream.seen.started:
                await asyncio.sleep(0.02)
            assert first.process is not None
            first.process.send_signal(signal.SIGKILL)  # no chance to give the lease back
            first.process.wait(timeout=10)
            with pytest.raises(httpx.HTTPError):
                await holding

    asyncio.run(hold_then_kill())
    killed_at = time.monotonic()
    assert generate(second, headers).status_code == 429  # the dead instance's lease still holds
    while generate(second, headers).status_code == 429:
        assert time.monotonic() - killed_at < LEASE_SECONDS + 2, "the lease never freed itself"
        time.sleep(0.1)
    assert time.monotonic() - killed_at >= LEASE_SECONDS - 1  # it expired, nobody gave it back
