"""Several Ollama servers behind one gateway: split, model-aware routing, failover and recovery."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_ollama_openai import FakeOllamaServer
from tests.support.gateway import HIGH_LIMITS, GatewayProcess

MODEL = "smollm:latest"
A_MODELS = {MODEL: 990_000_000, "only-a:latest": 100}
B_MODELS = {MODEL: 990_000_000, "only-b:latest": 200}


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOllamaServer, FakeOllamaServer]]:
    with FakeOllamaServer(models=A_MODELS) as a, FakeOllamaServer(models=B_MODELS) as b:
        yield a, b


@pytest.fixture(scope="module")
def gate(
    tmp_path_factory: pytest.TempPathFactory, fakes: tuple[FakeOllamaServer, FakeOllamaServer]
) -> Iterator[GatewayProcess]:
    urls = ",".join(fake.url for fake in fakes)
    with GatewayProcess(tmp_path_factory.mktemp("pool"), ollama_url=urls, env=HIGH_LIMITS) as gateway:
        yield gateway


def chat(
    gate: GatewayProcess, model: str = MODEL, prompt: str = "hi", stream: bool = False
) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    return httpx.post(gate.url + "/api/chat", json=body, timeout=10)


def chats_seen(fake: FakeOllamaServer, model: str = MODEL) -> int:
    return sum(1 for body in list(fake.chat_bodies) if body.get("model") == model)


def test_traffic_is_split_between_servers_that_have_the_model(
    gate: GatewayProcess, fakes: tuple[FakeOllamaServer, FakeOllamaServer]
) -> None:
    a, b = fakes
    before = chats_seen(a), chats_seen(b)

    answers = [chat(gate, prompt=f"request {i}") for i in range(10)]

    on_a, on_b = chats_seen(a) - before[0], chats_seen(b) - before[1]
    assert [r.status_code for r in answers] == [200] * 10
    assert on_a + on_b == 10
    assert min(on_a, on_b) >= 3


def test_a_model_goes_only_to_the_servers_that_have_it(
    gate: GatewayProcess, fakes: tuple[FakeOllamaServer, FakeOllamaServer]
) -> None:
    a, b = fakes

    only_b = [chat(gate, model="only-b:latest") for _ in range(4)]
    only_a = [chat(gate, model="only-a", stream=True) for _ in range(4)]  # no tag: ":latest"

    assert [r.status_code for r in only_b + only_a] == [200] * 8
    assert (chats_seen(b, "only-b:latest"), chats_seen(a, "only-b:latest")) == (4, 0)
    assert (chats_seen(a, "only-a"), chats_seen(b, "only-a")) == (4, 0)


def test_openai_requests_are_routed_by_model_too(
    gate: GatewayProcess, fakes: tuple[FakeOllamaServer, FakeOllamaServer]
) -> None:
    a, b = fakes
    before = a.count("/v1/chat/completions"), b.count("/v1/chat/completions")
    body = {"model": "only-b:latest", "messages": [{"role": "user", "content": "hi"}]}

    answers = [httpx.post(gate.url + "/v1/chat/completions", json=body, timeout=10) for _ in range(3)]

    assert [r.status_code for r in answers] == [200] * 3
    assert (a.count("/v1/chat/completions") - before[0], b.count("/v1/chat/completions") - before[1]) == (
        0,
        3,
    )


def test_the_gateways_own_chat_is_routed_by_model(
    gate: GatewayProcess, fakes: tuple[FakeOllamaServer, FakeOllamaServer]
) -> None:
    a, b = fakes

    answers = [
        httpx.post(gate.url + "/chat", json={"message": "own chat", "model": "only-a:latest"}, timeout=10)
        for _ in range(3)
    ]

    assert [r.status_code for r in answers] == [200] * 3

    def own(fake: FakeOllamaServer) -> int:
        return sum(1 for body in list(fake.seen.generate_requests) if body.get("prompt") == "own chat")

    assert (own(a), own(b)) == (3, 0)


def test_each_server_is_sent_its_own_host(
    gate: GatewayProcess, fakes: tuple[FakeOllamaServer, FakeOllamaServer]
) -> None:
    a, b = fakes
    httpx.get(gate.url + "/api/tags", headers={"Host": "gateway.example"}, timeout=10)

    assert a.hosts() == {f"127.0.0.1:{a.port}"}
    assert b.hosts() == {f"127.0.0.1:{b.port}"}


def test_listings_and_status_show_every_server(
    gate: GatewayProcess, fakes: tuple[FakeOllamaServer, FakeOllamaServer]
) -> None:
    a, b = fakes
    everything = {MODEL, "only-a:latest", "only-b:latest"}

    tags = httpx.get(gate.url + "/api/tags", timeout=10).json()
    models = httpx.get(gate.url + "/v1/models", timeout=10).json()
    document = gate.status()

    assert sorted(m["name"] for m in tags["models"]) == sorted(everything)
    assert sorted(m["id"] for m in models["data"]) == sorted(everything) and models["object"] == "list"
    assert document["ollama"]["online"] is True
    assert {m["name"] for m in document["ollama"]["models"]} == everything
    assert document["upstreams"] == [
        {"name": "ollama-1", "url": a.url, "online": True, "in_flight": 0, "models": sorted(A_MODELS)},
        {"name": "ollama-2", "url": b.url, "online": True, "in_flight": 0, "models": sorted(B_MODELS)},
    ]


def test_a_busy_server_is_passed_over_for_the_idle_one(
    gate: GatewayProcess, fakes: tuple[FakeOllamaServer, FakeOllamaServer]
) -> None:
    a, b = fakes
    body = {"model": MODEL, "messages": [{"role": "user", "content": "!held open"}]}
    with httpx.stream("POST", gate.url + "/api/chat", json=body, timeout=10) as held:
        lines = held.iter_lines()
        next(lines)  # the held stream is now in flight on one server
        busy, idle = (a, b) if any("!held" in str(x.get("messages")) for x in a.chat_bodies) else (b, a)
        in_flight = [u["in_flight"] for u in gate.status()["upstreams"]]
        before = chats_seen(busy), chats_seen(idle)

        answers = [chat(gate, prompt=f"meanwhile {i}") for i in range(4)]

        moved = chats_seen(busy) - before[0], chats_seen(idle) - before[1]
        busy.release()
        idle.release()
        assert json.loads(list(lines)[-1])["done"] is True

    assert sorted(in_flight) == [0, 1]
    assert [r.status_code for r in answers] == [200] * 4
    assert moved == (0, 4)


def test_failover_when_a_server_stops_and_recovery_when_it_returns(tmp_path: Path) -> None:
    a, b = FakeOllamaServer(models=A_MODELS), FakeOllamaServer(models=B_MODELS)
    with a, b, GatewayProcess(tmp_path, ollama_url=f"{a.url},{b.url}", env=HIGH_LIMITS) as gate:
        warm = [chat(gate, prompt=f"warm {i}") for i in range(4)]
        assert chats_seen(a) > 0 and chats_seen(b) > 0

        a.stop()
        b_before = chats_seen(b)
        during = [chat(gate, prompt=f"during {i}") for i in range(6)]
        b_during = chats_seen(b) - b_before
        offline = gate.status()["upstreams"]

        a.start()
        back = False
        for _ in range(100):  # the gateway re-probes a down server every second
            if all(u["online"] for u in gate.status()["upstreams"]):
                back = True
                break
            time.sleep(0.1)
        a_before = chats_seen(a)
        after = [chat(gate, prompt=f"after {i}") for i in range(6)]

    assert [r.status_code for r in warm + during + after] == [200] * 16
    # While A was down every request reached B, including those first routed to A and retried.
    assert b_during == 6
    assert [u["online"] for u in offline] == [False, True]
    assert back
    assert chats_seen(a) - a_before >= 2
