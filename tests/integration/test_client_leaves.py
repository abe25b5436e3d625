"""A client that leaves before its first byte stops Ollama at once, on every inference path.

The fake Ollama cancels a generation whose client (the gateway) hung up, and records it in
`seen.abandoned`: so a prompt found there was stopped, and a prompt still generating was not.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.integration.conftest import gateway_per_module
from tests.support.fake_ollama_openai import FakeOllamaServer
from tests.support.gateway import HIGH_LIMITS, GatewayProcess

MODEL = "smollm:latest"
CLIENT_PATIENCE = 0.5  # seconds a client waits for its first byte before it gives up and leaves

gate = gateway_per_module(HIGH_LIMITS, upstream="module_ollama_server")


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


# (path, body for a prompt): every metered path, streamed and not where the path streams.
REQUESTS: list[tuple[str, Any]] = [
    ("/chat", lambda p: {"message": p}),
    ("/chat/stream", lambda p: {"message": p}),
    ("/api/generate", lambda p: {"model": MODEL, "prompt": p, "stream": False}),
    ("/api/generate", lambda p: {"model": MODEL, "prompt": p}),
    ("/api/chat", lambda p: {"model": MODEL, "messages": messages(p), "stream": False}),
    ("/api/chat", lambda p: {"model": MODEL, "messages": messages(p)}),
    ("/api/embed", lambda p: {"model": MODEL, "input": p}),
    ("/api/embeddings", lambda p: {"model": MODEL, "prompt": p}),
    ("/v1/chat/completions", lambda p: {"model": MODEL, "messages": messages(p)}),
    ("/v1/chat/completions", lambda p: {"model": MODEL, "messages": messages(p), "stream": True}),
    ("/v1/completions", lambda p: {"model": MODEL, "prompt": p}),
    ("/v1/embeddings", lambda p: {"model": MODEL, "input": p}),
]


def abandoned_in_time(fake: FakeOllamaServer, prompt: str, within: float) -> bool:
    return fake.wait_until(lambda: prompt in fake.seen.abandoned, timeout=within)


@pytest.mark.parametrize(
    ("number", "path", "body"),
    [(number, path, body) for number, (path, body) in enumerate(REQUESTS, start=1)],
    ids=[f"{path}-{number}" for number, (path, _) in enumerate(REQUESTS, start=1)],
)
def test_a_client_that_leaves_while_ollama_has_not_answered_stops_the_generation(
    gate: GatewayProcess, module_ollama_server: FakeOllamaServer, number: int, path: str, body: Any
) -> None:
    """Ollama is still loading the model or generating a non-streamed answer: no byte has come back. The
    client's own timeout fires; the gateway must cancel the upstream request there and then (before the
    fix, Ollama went on until its answer was complete, and the row said `200 ok`)."""
    prompt = f"!hang {uuid.uuid4().hex[:8]}"
    address = f"127.0.1.{number}"  # this test's own client: its usage row is the one from this address
    timeout = httpx.Timeout(10, read=CLIENT_PATIENCE)
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=timeout) as client:
        left_at = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            client.post(gate.url + path, json=body(prompt))
    left_at += CLIENT_PATIENCE

    assert abandoned_in_time(module_ollama_server, prompt, within=5), "Ollama was never told to stop"
    stopped_after = time.monotonic() - left_at
    assert stopped_after < 2.0, f"Ollama stopped {stopped_after:.2f}s after the client left"
    [row] = gate.usage_rows(1, where=lambda row: row["client_ip"] == address)
    assert (row["status"], row["outcome"]) == (499, "cancelled")
    assert row["completion_tokens"] is None
    # The latency is the time until the client left, not until Ollama would have answered.
    assert CLIENT_PATIENCE * 800 <= row["latency_ms"] < 3000


def test_a_request_whose_client_stays_is_not_cancelled(
    gate: GatewayProcess, module_ollama_server: FakeOllamaServer
) -> None:
    """The listener must not mistake the end of a complete answer for a client leaving."""
    prompt = f"!wait=0.3 {uuid.uuid4().hex[:8]}"
    answer = httpx.post(gate.url + "/api/generate", json={"model": MODEL, "prompt": prompt, "stream": False})
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] is True
    assert prompt not in module_ollama_server.seen.abandoned
