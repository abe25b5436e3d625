"""The gateway's GPU queue on the real server, in front of a fake Ollama that runs `parallel` generations
at once and queues the rest first in, first out (as Ollama does): the order it started them in is the
order the gateway let them through."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_ollama_openai import FakeOllamaServer
from tests.support.gateway import GatewayProcess

MODEL = "smollm:latest"
ADMIN_TOKEN = "scheduler-admin-token"
ADMIN = {"X-Admin-Token": ADMIN_TOKEN}
ROOMY = {
    "ADMIN_TOKEN": ADMIN_TOKEN,
    "ANON_RATE_LIMIT": "100000/60",
    "MEMBER_RATE_LIMIT": "100000/60",
    "MAX_QUEUED_PER_IDENTITY": "100",
}


@pytest.fixture
def upstream() -> Iterator[FakeOllamaServer]:
    with FakeOllamaServer(parallel=1) as server:
        yield server


@pytest.fixture
def gate(tmp_path: Path, upstream: FakeOllamaServer) -> Iterator[GatewayProcess]:
    with GatewayProcess(tmp_path, ollama_url=upstream.url, env=ROOMY | {"SLOTS": "1"}) as gateway:
        yield gateway


def key(gate: GatewayProcess, user: str, plan: str | None = None, **fields: Any) -> dict[str, str]:
    if plan is not None:
        assert httpx.put(f"{gate.url}/api/plans/{plan}", json=fields, headers=ADMIN).status_code == 200
        assert (
            httpx.put(f"{gate.url}/api/users/{user}", json={"plan": plan}, headers=ADMIN).status_code == 200
        )
    return {"X-API-Key": gate.create_key(user, headers=ADMIN)["key"]}


async def generate(
    client: httpx.AsyncClient, gate: GatewayProcess, prompt: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "stream": False}
    return await client.post(gate.url + "/api/generate", json=body, headers=headers or {})


async def until_started(upstream: FakeOllamaServer, prompt: str) -> None:
    for _ in range(500):
        if prompt in upstream.seen.started:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{prompt!r} never started")


async def until_queued(client: httpx.AsyncClient, gate: GatewayProcess, count: int) -> None:
    """Until `count` requests wait in the gateway's queue (requests sent at once arrive in any order)."""
    for _ in range(500):
        if (await client.get(gate.url + "/api/status")).json()["queue"]["waiting"] >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} requests never waited in the gateway's queue")


def tag() -> str:
    return uuid.uuid4().hex[:6]


def test_a_light_user_goes_after_at_most_one_of_a_flooding_users_requests(
    gate: GatewayProcess, upstream: FakeOllamaServer
) -> None:
    heavy, light = key(gate, "heavy"), key(gate, "light")
    run = tag()

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            flood = [
                asyncio.create_task(generate(client, gate, f"!wait=0.2 heavy {run} {n}", heavy))
                for n in range(20)
            ]
            await until_started(upstream, f"!wait=0.2 heavy {run} 0")
            await asyncio.sleep(0.05)  # the other 19 are queued at the gateway
            single = await generate(client, gate, f"!wait=0.2 light {run}", light)
            return [single, *await asyncio.gather(*flood)]

    answers = asyncio.run(scenario())
    assert all(answer.status_code == 200 for answer in answers)
    order = [prompt for prompt in upstream.seen.started if run in prompt]
    assert order.index(f"!wait=0.2 light {run}") <= 2, order  # the running one, and at most one more
    assert upstream.seen.most_generating[MODEL] == 1  # the gateway never sent two at once


def test_a_member_goes_before_an_anonymous_flood(gate: GatewayProcess, upstream: FakeOllamaServer) -> None:
    member = key(gate, "member-in-a-hurry")
    run = tag()

    async def scenario() -> None:
        transports = [httpx.AsyncHTTPTransport(local_address=f"127.0.3.{n}") for n in range(1, 6)]
        clients = [httpx.AsyncClient(transport=t, timeout=60) for t in transports]
        try:
            flood = [
                asyncio.create_task(generate(clients[n % 5], gate, f"!wait=0.2 anon {run} {n}"))
                for n in range(15)
            ]
            await until_queued(clients[0], gate, 14)
            assert (await generate(clients[0], gate, f"!wait=0.2 member {run}", member)).status_code == 200
            await asyncio.gather(*flood)
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(scenario())
    order = [prompt for prompt in upstream.seen.started if run in prompt]
    assert order[1] == f"!wait=0.2 member {run}", order  # next after the one that was running


def test_weights_two_to_one_give_about_two_to_one_service(
    gate: GatewayProcess, upstream: FakeOllamaServer
) -> None:
    heavy = key(gate, "gold-user", "gold-2", weight=2)
    light = key(gate, "silver-user", "silver-1", weight=1)
    run = tag()

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=120) as client:

            async def keep_busy(headers: dict[str, str], name: str, deadline: float) -> None:
                n = 0
                while time.monotonic() < deadline:  # always one request waiting
                    await generate(client, gate, f"!wait=0.1 {name} {run} {n}", headers)
                    n += 1

            deadline = time.monotonic() + 6
            await asyncio.gather(
                *(keep_busy(heavy, "gold", deadline) for _ in range(3)),
                *(keep_busy(light, "silver", deadline) for _ in range(3)),
            )

    asyncio.run(scenario())
    served = Counter(prompt.split()[1] for prompt in upstream.seen.started if run in prompt)
    ratio = served["gold"] / served["silver"]
    assert 1.5 < ratio < 2.7, served


def test_the_queue_bounds_answer_at_once_and_consume_nothing(
    tmp_path: Path, upstream: FakeOllamaServer
) -> None:
    env = ROOMY | {"SLOTS": "1", "MAX_QUEUED_PER_IDENTITY": "2", "MAX_QUEUE": "3"}
    with GatewayProcess(tmp_path, ollama_url=upstream.url, env=env) as gate:
        first, second = key(gate, "capped", "capped", requests="100/60"), key(gate, "other")
        run = tag()

        async def scenario() -> tuple[list[httpx.Response], dict[str, Any], dict[str, Any]]:
            async with httpx.AsyncClient(timeout=60) as client:
                holding = asyncio.create_task(generate(client, gate, f"!wait=2 hold {run}", first))
                await until_started(upstream, f"!wait=2 hold {run}")
                queued = [
                    asyncio.create_task(generate(client, gate, f"q {run} {n}", first)) for n in range(2)
                ]
                await asyncio.sleep(0.2)
                over_cap = await generate(client, gate, f"over {run}", first)  # third waiting for `capped`
                other_waiting = asyncio.create_task(generate(client, gate, f"o {run}", second))
                await asyncio.sleep(0.2)
                full = await generate(client, gate, f"full {run}", key(gate, "third"))  # 3 wait in all
                me = (await client.get(gate.url + "/api/me", headers=first)).json()
                status = (await client.get(gate.url + "/api/status")).json()
                rest = await asyncio.gather(holding, *queued, other_waiting)
                return [over_cap, full, *rest], me, status

        (over_cap, full, *served), me, status = asyncio.run(scenario())

    assert over_cap.status_code == 429 and over_cap.headers["Retry-After"] == "1"
    assert "waiting for the GPU" in over_cap.json()["error"]
    assert full.status_code == 503 and int(full.headers["Retry-After"]) >= 1
    assert "queue is full" in full.json()["error"]
    assert all(answer.status_code == 200 for answer in served)
    assert me["queued"] == 2
    assert me["remaining"]["requests"] == 100 - 3  # the refused one took nothing from the quota
    assert status["queue"]["waiting"] == 3
    [smollm] = [m for m in status["queue"]["models"] if m["model"] == MODEL]
    assert smollm == {"model": MODEL, "slots": 1, "busy": 1, "waiting": 3}
    assert not any(f"over {run}" in p or f"full {run}" in p for p in upstream.seen.started)


def test_a_request_waits_its_plans_queue_timeout_then_503(
    gate: GatewayProcess, upstream: FakeOllamaServer
) -> None:
    impatient = key(gate, "impatient", "impatient", queue_timeout=0.5)
    run = tag()

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(timeout=60) as client:
            holding = asyncio.create_task(generate(client, gate, f"!wait=2 hold {run}"))
            await until_started(upstream, f"!wait=2 hold {run}")
            timed_out = await generate(client, gate, f"late {run}", impatient)
            await holding
            return timed_out

    started = time.monotonic()
    timed_out = asyncio.run(scenario())
    assert timed_out.status_code == 503, timed_out.text
    assert "within 0.5s" in timed_out.json()["error"] and timed_out.headers["Retry-After"]
    assert time.monotonic() - started < 10
    assert f"late {run}" not in " ".join(upstream.seen.started)


def test_a_client_that_leaves_while_queued_never_reaches_ollama(
    gate: GatewayProcess, upstream: FakeOllamaServer
) -> None:
    run = tag()
    address = "127.0.3.77"

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            holding = asyncio.create_task(generate(client, gate, f"!wait=1.5 hold {run}"))
            await until_started(upstream, f"!wait=1.5 hold {run}")
            transport = httpx.AsyncHTTPTransport(local_address=address)
            async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(10, read=0.3)) as leaving:
                with pytest.raises(httpx.ReadTimeout):
                    await generate(leaving, gate, f"gone {run}")
            await holding

    asyncio.run(scenario())
    assert f"gone {run}" not in " ".join(upstream.seen.started)
    [row] = gate.usage_rows(1, headers=ADMIN, where=lambda row: row["client_ip"] == address)
    assert (row["status"], row["outcome"]) == (499, "cancelled")
    assert 200 <= row["queue_ms"] <= 2000  # it waited until it left


@pytest.fixture
def two_upstreams() -> Iterator[tuple[FakeOllamaServer, FakeOllamaServer]]:
    with FakeOllamaServer(parallel=2) as first, FakeOllamaServer(parallel=2) as second:
        yield first, second


def test_the_upstream_with_the_model_loaded_is_preferred(
    tmp_path: Path, two_upstreams: tuple[FakeOllamaServer, FakeOllamaServer]
) -> None:
    cold, warm = two_upstreams
    cold.loaded, warm.loaded = set(), {MODEL}
    urls = f"{cold.url}#name=cold,{warm.url}#name=warm"
    with GatewayProcess(tmp_path, ollama_url=urls, env=ROOMY | {"SLOTS": "2"}) as gate:
        run = tag()

        async def scenario() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as client:
                return list(
                    await asyncio.gather(*(generate(client, gate, f"!wait=0.3 {run} {n}") for n in range(3)))
                )

        answers = asyncio.run(scenario())
    assert all(answer.status_code == 200 for answer in answers)
    on_warm = [p for p in warm.seen.started if run in p]
    on_cold = [p for p in cold.seen.started if run in p]
    assert len(on_warm) == 2 and len(on_cold) == 1  # the warm one's two slots first, then the cold one


def test_with_the_queue_off_requests_go_straight_to_ollama(
    tmp_path: Path, upstream: FakeOllamaServer
) -> None:
    with GatewayProcess(tmp_path, ollama_url=upstream.url, env=ROOMY | {"SLOTS": "0"}) as gate:
        run = tag()

        async def scenario() -> None:
            async with httpx.AsyncClient(timeout=60) as client:
                await asyncio.gather(*(generate(client, gate, f"!wait=0.3 off {run} {n}") for n in range(3)))

        asyncio.run(scenario())
        assert "queue" not in gate.status()
    # Ollama's own queue took them (its one generation at a time), in whatever order they arrived.
    assert len([p for p in upstream.seen.started if run in p]) == 3
