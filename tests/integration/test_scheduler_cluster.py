"""GPU slots shared by two gateways on one Redis: never more in flight than the slots, summed over the
instances; the order follows the same rules across them; a killed instance's slot frees itself."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import gateway_pair
from tests.support.fake_ollama_openai import FakeOllamaServer
from tests.support.gateway import GatewayProcess

MODEL = "smollm:latest"
ADMIN_TOKEN = "slots-admin-token"
ADMIN = {"X-Admin-Token": ADMIN_TOKEN}
LEASE_SECONDS = 2.0

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
def upstream() -> Iterator[FakeOllamaServer]:
    # Ollama itself would run 4 at once: only the gateways' shared slots hold it to 2.
    with FakeOllamaServer(parallel=4) as server:
        yield server


@pytest.fixture
def pair(tmp_path: Path, upstream: FakeOllamaServer) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    env = {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "MEMBER_RATE_LIMIT": "100000/60",
        "ANON_RATE_LIMIT": "100000/60",
        "MAX_QUEUED_PER_IDENTITY": "100",
        "SLOTS": "2",
        "LEASE_SECONDS": str(LEASE_SECONDS),
    }
    with gateway_pair(tmp_path, upstream.url, env) as gateways:
        yield gateways


async def generate(
    client: httpx.AsyncClient, gate: GatewayProcess, prompt: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "stream": False}
    return await client.post(gate.url + "/api/generate", json=body, headers=headers or {})


async def until_waiting(client: httpx.AsyncClient, gate: GatewayProcess, count: int) -> None:
    for _ in range(500):
        if (await client.get(gate.url + "/api/status")).json()["queue"]["waiting"] >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} requests never waited at {gate.url}")


def test_two_instances_never_run_more_than_the_slots(
    pair: tuple[GatewayProcess, GatewayProcess], upstream: FakeOllamaServer
) -> None:
    run = uuid.uuid4().hex[:6]

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return list(
                await asyncio.gather(
                    *(generate(client, pair[n % 2], f"!wait=0.2 both {run} {n}") for n in range(16))
                )
            )

    answers = asyncio.run(flood())
    assert [a.status_code for a in answers] == [200] * 16
    assert len([p for p in upstream.seen.started if run in p]) == 16
    assert upstream.seen.most_generating[MODEL] == 2  # both instances together: the 2 slots, never 3


def test_a_member_on_one_instance_goes_before_an_anonymous_flood_on_the_other(
    pair: tuple[GatewayProcess, GatewayProcess], upstream: FakeOllamaServer
) -> None:
    flooded, other = pair
    member = {"X-API-Key": other.create_key("cluster-member", headers=ADMIN)["key"]}
    run = uuid.uuid4().hex[:6]

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            flood = [
                asyncio.create_task(generate(client, flooded, f"!wait=0.3 anon {run} {n}")) for n in range(12)
            ]
            await until_waiting(client, flooded, 10)  # two run, ten wait on the first instance
            assert (await generate(client, other, f"!wait=0.3 member {run}", member)).status_code == 200
            await asyncio.gather(*flood)

    asyncio.run(scenario())
    order = [prompt for prompt in upstream.seen.started if run in prompt]
    assert order.index(f"!wait=0.3 member {run}") == 2, order  # the first slot that freed was its


def test_a_slot_held_by_a_killed_instance_frees_itself(
    pair: tuple[GatewayProcess, GatewayProcess], upstream: FakeOllamaServer
) -> None:
    dying, survivor = pair
    run = uuid.uuid4().hex[:6]

    async def scenario() -> float:
        async with httpx.AsyncClient(timeout=60) as client:
            holding = [asyncio.create_task(generate(client, dying, f"!hang {run} {n}")) for n in range(2)]
            while len([p for p in upstream.seen.started if run in p]) < 2:
                await asyncio.sleep(0.02)
            assert dying.process is not None
            dying.process.send_signal(signal.SIGKILL)  # its two slots are never given back
            dying.process.wait(timeout=10)
            killed = time.monotonic()
            await asyncio.gather(*holding, return_exceptions=True)
            answer = await generate(client, survivor, f"after {run}")
            assert answer.status_code == 200, answer.text
            return time.monotonic() - killed

    waited = asyncio.run(scenario())
    assert waited < LEASE_SECONDS + 3, f"the survivor waited {waited:.1f}s for the dead instance's slots"
    assert waited > LEASE_SECONDS / 3  # nobody gave them back: they expired
