"""/metrics on the real gateway: every family from start-up, who may read it, and values that match the
traffic (counts, token sums against the usage rows, the queue while requests wait), across workers too."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fake_ollama_openai import FakeOllamaServer
from tests.support.gateway import HIGH_LIMITS, GatewayProcess
from tests.support.services import shared_redis_url

MODEL = "smollm:latest"
FAMILIES = {
    "ollama_gate_requests": "counter",
    "ollama_gate_request_duration_seconds": "histogram",
    "ollama_gate_time_to_first_byte_seconds": "histogram",
    "ollama_gate_tokens": "counter",
    "ollama_gate_rejections": "counter",
    "ollama_gate_queue_wait_seconds": "histogram",
    "ollama_gate_queue_depth": "gauge",
    "ollama_gate_slots": "gauge",
    "ollama_gate_slots_busy": "gauge",
    "ollama_gate_upstream_up": "gauge",
    "ollama_gate_usage_rows_pending": "gauge",
    "ollama_gate_usage_rows_dropped": "gauge",
    "ollama_gate_dependency_up": "gauge",
}


@pytest.fixture
def upstream() -> Iterator[FakeOllamaServer]:
    with FakeOllamaServer(parallel=1) as server:
        yield server


def scrape(gate: GatewayProcess, headers: dict[str, str] | None = None) -> dict[str, dict[tuple, float]]:  # type: ignore[type-arg]
    """family -> {(sample name, sorted labels): value}."""
    response = httpx.get(gate.url + "/metrics", headers=headers or {}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    families: dict[str, dict[tuple, float]] = {}  # type: ignore[type-arg]
    for family in text_string_to_metric_families(response.text):
        samples = families.setdefault(family.name, {})
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families


def value(families: dict[str, dict[tuple, float]], family: str, sample: str, **labels: str) -> float:  # type: ignore[type-arg]
    return families.get(family, {}).get((sample, tuple(sorted(labels.items()))), 0.0)


def test_every_family_is_there_from_start_up(tmp_path: Path, upstream: FakeOllamaServer) -> None:
    with GatewayProcess(tmp_path, ollama_url=upstream.url) as gate:
        text = httpx.get(gate.url + "/metrics", timeout=10).text
        families = scrape(gate)
    for name, kind in FAMILIES.items():
        assert (
            f"# TYPE {name}{'_total' if kind == 'counter' else ''} {kind}" in text
            or f"# TYPE {name} {kind}" in text
        ), name
    for reason in (
        "unauthorized",
        "requests",
        "tokens",
        "concurrency",
        "model",
        "queue_full",
        "queue_timeout",
    ):
        assert value(families, "ollama_gate_rejections", "ollama_gate_rejections_total", reason=reason) == 0
    assert value(families, "ollama_gate_usage_rows_pending", "ollama_gate_usage_rows_pending") == 0
    assert value(families, "ollama_gate_dependency_up", "ollama_gate_dependency_up", name="database") == 1


def test_who_may_read_the_metrics(tmp_path: Path, upstream: FakeOllamaServer) -> None:
    env = {"ADMIN_TOKEN": "metrics-token"}
    with GatewayProcess(tmp_path / "tokened", ollama_url=upstream.url, env=env) as gate:
        assert httpx.get(gate.url + "/metrics").status_code == 403
        assert httpx.get(gate.url + "/metrics", headers={"X-Admin-Token": "metrics-token"}).status_code == 200
    with GatewayProcess(
        tmp_path / "open", ollama_url=upstream.url, env={"METRICS_PUBLIC": "true", **env}
    ) as gate:
        assert httpx.get(gate.url + "/metrics").status_code == 200
    with GatewayProcess(tmp_path / "local", ollama_url=upstream.url) as gate:
        assert httpx.get(gate.url + "/metrics").status_code == 200  # the loopback admin, no token set
        assert httpx.get(gate.url + "/metrics", headers={"X-Forwarded-For": "203.0.113.5"}).status_code == 403


def test_metrics_match_the_traffic_and_the_usage_rows(tmp_path: Path, upstream: FakeOllamaServer) -> None:
    with GatewayProcess(tmp_path, ollama_url=upstream.url, env=HIGH_LIMITS) as gate:
        time.sleep(0.5)  # the first model listing (the bound of the model labels)
        for n in range(5):
            assert gate.chat(f"count me {n}").status_code == 200
        assert gate.chat("wrong", {"X-API-Key": "oa-" + "x" * 43}).status_code == 401
        rows = gate.usage_rows(5)
        families = scrape(gate)

    labels = {"endpoint": "/chat", "model": MODEL, "plan": "anonymous", "status": "200"}
    assert value(families, "ollama_gate_requests", "ollama_gate_requests_total", **labels) == 5
    assert (
        value(
            families,
            "ollama_gate_request_duration_seconds",
            "ollama_gate_request_duration_seconds_count",
            endpoint="/chat",
            model=MODEL,
        )
        >= 5
    )
    assert (
        value(
            families,
            "ollama_gate_time_to_first_byte_seconds",
            "ollama_gate_time_to_first_byte_seconds_count",
            endpoint="/chat",
            model=MODEL,
        )
        >= 5
    )
    prompt = sum(row["prompt_tokens"] for row in rows)
    completion = sum(row["completion_tokens"] for row in rows)
    tokens = "ollama_gate_tokens_total"
    assert (
        value(families, "ollama_gate_tokens", tokens, model=MODEL, plan="anonymous", kind="prompt") == prompt
    )
    assert (
        value(families, "ollama_gate_tokens", tokens, model=MODEL, plan="anonymous", kind="completion")
        == completion
    )
    assert (
        value(families, "ollama_gate_rejections", "ollama_gate_rejections_total", reason="unauthorized") == 1
    )


def test_made_up_model_names_do_not_grow_the_labels(tmp_path: Path, upstream: FakeOllamaServer) -> None:
    with GatewayProcess(tmp_path, ollama_url=upstream.url, env=HIGH_LIMITS) as gate:
        time.sleep(0.5)
        for n in range(5):
            gate.chat("hi", model=f"invented-{n}:7b")
        families = scrape(gate)
    models = {dict(labels).get("model") for (_, labels) in families["ollama_gate_requests"]}
    assert not any(str(m).startswith("invented") for m in models)
    assert "other" in models


def test_the_queue_gauges_while_requests_wait(tmp_path: Path, upstream: FakeOllamaServer) -> None:
    with GatewayProcess(tmp_path, ollama_url=upstream.url, env=HIGH_LIMITS | {"SLOTS": "1"}) as gate:

        async def scenario() -> dict[str, dict[tuple, float]]:  # type: ignore[type-arg]
            async with httpx.AsyncClient(timeout=30) as client:
                body = {"model": MODEL, "prompt": "!wait=3 hold", "stream": False}
                holding = [
                    asyncio.create_task(client.post(gate.url + "/api/generate", json=body)) for _ in range(4)
                ]
                await asyncio.sleep(1.8)  # one runs, three wait; the gauges are sampled every second
                families = scrape(gate)
                await asyncio.gather(*holding)
                return families

        families = asyncio.run(scenario())
    assert (
        value(families, "ollama_gate_queue_depth", "ollama_gate_queue_depth", upstream="*", model=MODEL) == 3
    )
    assert value(families, "ollama_gate_slots", "ollama_gate_slots", upstream="ollama-1", model=MODEL) == 1
    assert (
        value(families, "ollama_gate_slots_busy", "ollama_gate_slots_busy", upstream="ollama-1", model=MODEL)
        == 1
    )
    assert value(families, "ollama_gate_upstream_up", "ollama_gate_upstream_up", upstream="ollama-1") == 1


@pytest.mark.redis
def test_with_workers_the_numbers_cover_every_worker(tmp_path: Path, upstream: FakeOllamaServer) -> None:
    env = HIGH_LIMITS | {"REDIS_URL": shared_redis_url()}
    with GatewayProcess(tmp_path, ollama_url=upstream.url, env=env, args=["--workers", "2"]) as gate:
        time.sleep(0.5)
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            for n in range(20):  # new connections, spread over the workers by the kernel
                assert client.post(gate.url + "/chat", json={"message": f"w {n}"}).status_code == 200
        totals = []
        for _ in range(4):  # whichever worker answers, the sum is the same
            families = scrape(gate)
            totals.append(
                sum(
                    v
                    for (name, labels), v in families["ollama_gate_requests"].items()
                    if name == "ollama_gate_requests_total" and dict(labels)["endpoint"] == "/chat"
                )
            )
    assert totals == [20.0] * 4
