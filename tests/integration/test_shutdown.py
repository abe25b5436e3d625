"""A clean stop under load loses nothing: every answered request is a usage row after a restart."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import HIGH_LIMITS, GatewayProcess

REQUESTS = 300
CONNECTIONS = 60
# The signal goes out once this many answers are back: the rest are queued, in flight or not yet sent.
SIGNAL_AFTER_ANSWERS = 40
SLOW_STREAMS = 10


async def one_request(client: httpx.AsyncClient, url: str, index: int) -> int | None:
    """The status of a completed answer, or None when the gateway turned the request away or cut it."""
    slow = index < SLOW_STREAMS
    endpoint = "/chat/stream" if slow or index % 3 == 0 else "/chat"
    message = "!slow" if slow else f"load {index}"
    try:
        async with client.stream("POST", url + endpoint, json={"message": message}) as response:
            body = await response.aread()
    except httpx.TransportError:
        return None
    if endpoint == "/chat/stream" and response.status_code == 200 and b'"done":true' not in body:
        return None  # a stream cut short was not answered
    return response.status_code


async def load_with_signal(gate: GatewayProcess, sig: signal.Signals) -> tuple[Counter[int | None], int]:
    """Fire REQUESTS requests at once, signal the gateway while they run; (statuses, exit code)."""
    process = gate.process
    assert process is not None
    answered = 0
    signalled = asyncio.Event()
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def counted(index: int) -> int | None:
            nonlocal answered
            status = await one_request(client, gate.url, index)
            answered += 1
            if answered == SIGNAL_AFTER_ANSWERS:
                process.send_signal(sig)
                signalled.set()
            return status

        statuses = await asyncio.gather(*(counted(i) for i in range(REQUESTS)))
    assert signalled.is_set()
    # Wait without signalling again: a second SIGINT is uvicorn's "force quit", which skips the drain.
    exit_code = await asyncio.to_thread(process.wait, 30)
    return Counter(statuses), exit_code


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_clean_stop_under_load_records_every_answered_request(
    tmp_path: Path, module_ollama: FakeOllama, sig: signal.Signals
) -> None:
    gate = GatewayProcess(tmp_path, ollama_url=module_ollama.url, env=HIGH_LIMITS).start()
    try:
        statuses, exit_code = await load_with_signal(gate, sig)
    finally:
        gate.kill()

    with GatewayProcess(tmp_path, ollama_url=module_ollama.url, env=HIGH_LIMITS) as restarted:
        rows = httpx.get(restarted.url + "/api/usage", params={"limit": 1000}, timeout=10).json()["logs"]

    answered_ok = statuses[200]
    # The signal really landed mid-load: some answers came before it and some requests were turned away.
    assert SIGNAL_AFTER_ANSWERS <= answered_ok < REQUESTS, statuses
    assert set(statuses) <= {200, None}, statuses
    # uvicorn re-raises the signal it handled once the drain is done: dying by it is the clean exit.
    assert exit_code in (0, -sig), gate.log()[-3000:]
    assert "Traceback" not in gate.log()
    assert len(rows) == answered_ok, (statuses, Counter((row["endpoint"], row["outcome"]) for row in rows))
    assert {row["outcome"] for row in rows} == {"ok"}
    assert {row["status"] for row in rows} == {200}
    slow_streams = [row for row in rows if row["endpoint"] == "/chat/stream"]
    assert slow_streams and all(row["completion_tokens"] for row in slow_streams)
