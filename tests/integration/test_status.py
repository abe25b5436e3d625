"""GET /api/status on the real server with Ollama up, down and hanging."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import gateway_per_module
from tests.support.fake_ollama import FakeOllama, free_port
from tests.support.gateway import GatewayProcess

MODELS = {
    "smollm:latest": 990_000_000,
    "qwen2.5:7b": 4_683_087_332,
    "mid:3b": 1_236_000_001,
    "tiny:1m": 4_999_999,
}
EXPECTED_MODELS = [
    {"name": "mid:3b", "size_gb": 1.24},
    {"name": "qwen2.5:7b", "size_gb": 4.68},
    {"name": "smollm:latest", "size_gb": 0.99},
    {"name": "tiny:1m", "size_gb": 0.0},
]
# The document: more keys may be added, none of these removed.
DOCUMENTED_KEYS = {
    "server": {"uptime_seconds", "uptime_human"},
    "system": {"ram_total_gb", "ram_used_gb", "ram_percent", "cpu_percent"},
    "ollama": {"online", "models"},
    "usage": {"total_requests", "active_anonymous_ips", "anon_rate_limit", "member_rate_limit"},
}
# The status must answer within ~2 s however Ollama behaves; 5 s only bounds a broken gateway.
STATUS_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def module_ollama() -> Iterator[FakeOllama]:
    """This module's own fake Ollama: models whose sizes round in telling ways."""
    with FakeOllama(models=MODELS) as fake:
        yield fake


gate = gateway_per_module({"ANON_RATE_LIMIT": "1000/60"})


def get_status(gate: GatewayProcess) -> dict[str, Any]:
    response = httpx.get(gate.url + "/api/status", timeout=STATUS_TIMEOUT)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    status: dict[str, Any] = response.json()
    return status


def test_status_has_every_documented_field(gate: GatewayProcess) -> None:
    status = get_status(gate)

    for section, keys in DOCUMENTED_KEYS.items():
        assert keys <= set(status[section]), section
    server, system = status["server"], status["system"]
    assert isinstance(server["uptime_seconds"], int) and server["uptime_seconds"] >= 0
    assert re.fullmatch(r"(\d+d )?(\d+h )?\d+m", server["uptime_human"])
    assert system["ram_total_gb"] > 0
    assert 0 <= system["ram_used_gb"] <= system["ram_total_gb"]
    assert 0 <= system["ram_percent"] <= 100
    assert 0 <= system["cpu_percent"] <= 100


def test_status_lists_ollamas_models_with_sizes_in_gb(gate: GatewayProcess) -> None:
    ollama = get_status(gate)["ollama"]

    assert ollama["online"] is True
    assert sorted(ollama["models"], key=lambda model: model["name"]) == EXPECTED_MODELS


def test_status_reports_the_configured_rate_limits(gate: GatewayProcess) -> None:
    usage = get_status(gate)["usage"]

    assert usage["anon_rate_limit"] == "1000 req / 60s"
    assert usage["member_rate_limit"] == "30 req / 60s"


def test_status_counts_chat_requests_and_anonymous_clients(gate: GatewayProcess) -> None:
    before = get_status(gate)["usage"]["total_requests"]
    for n in range(3):
        response = httpx.post(gate.url + "/chat", json={"message": f"count me {n}"}, timeout=10)
        assert response.status_code == 200

    usage = get_status(gate)["usage"]
    assert usage["total_requests"] == before + 3
    # Every request of this test comes from 127.0.0.1.
    assert usage["active_anonymous_ips"] == 1


async def test_a_burst_of_status_calls_is_not_a_burst_of_upstream_calls(
    gate: GatewayProcess, module_ollama: FakeOllama
) -> None:
    probes_before = module_ollama.seen.tags_requests
    async with httpx.AsyncClient(timeout=STATUS_TIMEOUT) as client:
        responses = await asyncio.gather(*(client.get(gate.url + "/api/status") for _ in range(50)))

    assert [response.status_code for response in responses] == [200] * 50
    assert all(response.json()["ollama"]["online"] is True for response in responses)
    assert module_ollama.seen.tags_requests - probes_before <= 2


def test_status_with_ollama_down_says_offline(tmp_path_factory: pytest.TempPathFactory) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with GatewayProcess(tmp_path_factory.mktemp("status-down"), ollama_url=closed) as gateway:
        status = get_status(gateway)

    assert status["ollama"] == {"online": False, "models": []}
    for section, keys in DOCUMENTED_KEYS.items():
        assert keys <= set(status[section]), section


def test_status_with_ollama_hanging_still_answers_offline(
    fake_ollama: FakeOllama, gateway: GatewayProcess
) -> None:
    # Function-scoped fixtures: this fake never answers /api/tags within the probe's bound.
    fake_ollama.tags_delay = 30

    status = get_status(gateway)

    assert status["ollama"] == {"online": False, "models": []}
    assert fake_ollama.seen.tags_requests >= 1
    # The cached probe answers the next caller too.
    assert get_status(gateway)["ollama"]["online"] is False


def test_a_request_that_finds_ollama_offline_is_reflected_by_the_next_status(tmp_path: Path) -> None:
    """The status's probe is cached for 2 s; a /chat that just got 503 "offline" must not be contradicted
    by a cached `online: true` the next moment."""
    fake = FakeOllama().start()
    with GatewayProcess(tmp_path, ollama_url=fake.url, env={"ANON_RATE_LIMIT": "1000/60"}) as gateway:
        assert get_status(gateway)["ollama"]["online"] is True  # probed and cached
        fake.stop()
        answer = httpx.post(gateway.url + "/chat", json={"message": "hi"}, timeout=10)
        assert answer.status_code == 503, answer.text
        assert get_status(gateway)["ollama"]["online"] is False
        # And back: a request that finds it again makes the status say so at once too.
        fake = FakeOllama(port=fake.port).start()
        try:
            assert httpx.post(gateway.url + "/chat", json={"message": "hi"}, timeout=10).status_code == 200
            assert get_status(gateway)["ollama"]["online"] is True
        finally:
            fake.stop()


ADMIN_TOKEN = "status-admin-token"


def test_anonymous_callers_never_see_the_upstream_addresses(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    env = {"ANON_RATE_LIMIT": "1000/60", "ADMIN_TOKEN": ADMIN_TOKEN}
    with GatewayProcess(tmp_path, ollama_url=closed, env=env) as gateway:
        anonymous = get_status(gateway)
        admin = httpx.get(
            gateway.url + "/api/status", headers={"X-Admin-Token": ADMIN_TOKEN}, timeout=5
        ).json()
        failed = httpx.post(gateway.url + "/chat", json={"message": "hi"}, timeout=10)

    assert "upstreams" not in anonymous
    assert closed not in json.dumps(anonymous)
    assert admin["upstreams"] == [
        {"name": "ollama-1", "url": closed, "online": False, "in_flight": 0, "models": []}
    ]
    assert failed.status_code == 503
    assert closed.removeprefix("http://") not in failed.text
    assert "ollama-1" in failed.json()["detail"]
