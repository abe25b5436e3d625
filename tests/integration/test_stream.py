"""POST /chat/stream on the real server: NDJSON forwarded chunk by chunk, and a client walking away."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time
from typing import Any

import httpx

from tests.integration.conftest import gateway_per_module
from tests.support.fake_ollama import FakeOllama, answer_words
from tests.support.gateway import GatewayProcess

NDJSON = "application/x-ndjson"


gate = gateway_per_module({"ANON_RATE_LIMIT": "1000/60"})


def streamed_lines(gate: GatewayProcess, body: dict[str, Any]) -> tuple[httpx.Response, list[dict[str, Any]]]:
    with httpx.stream("POST", gate.url + "/chat/stream", json=body, timeout=10) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    return response, lines


def settle(fake: FakeOllama) -> None:
    """Wait until every stream the fake started has ended, so its counters can serve as a baseline."""
    assert fake.wait_for(lambda seen: seen.streams_finished + seen.streams_abandoned == seen.streams_started)


def test_stream_is_ndjson_with_one_line_per_upstream_chunk(gate: GatewayProcess) -> None:
    prompt = "tell me a story"
    response, lines = streamed_lines(gate, {"message": prompt, "model": "smollm:latest"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith(NDJSON)
    words = answer_words(prompt)
    assert [line["response"] for line in lines[:-1]] == words
    assert all(line["done"] is False and line["model"] == "smollm:latest" for line in lines[:-1])
    final = lines[-1]
    assert final["done"] is True and final["response"] == ""
    assert final["done_reason"] == "stop" and final["eval_count"] == len(words)
    assert "context" not in final


def test_streamed_text_equals_the_json_answer_for_the_same_prompt(gate: GatewayProcess) -> None:
    body = {"message": "same answer both ways please", "model": "smollm:latest"}
    _, lines = streamed_lines(gate, body)
    whole = httpx.post(gate.url + "/chat", json=body, timeout=10)

    assert whole.status_code == 200
    assert "".join(line["response"] for line in lines) == whole.json()["response"]["response"]


def test_the_upstream_is_asked_to_stream_with_system_and_options(
    gate: GatewayProcess, module_ollama: FakeOllama
) -> None:
    body = {"message": "streamed options", "system": "be kind", "options": {"seed": 7}, "unknown": 1}
    response, lines = streamed_lines(gate, body)

    assert response.status_code == 200 and lines[-1]["done"] is True
    [sent] = module_ollama.seen.requests_with_prompt("streamed options")
    assert sent == {
        "model": "smollm:latest",
        "prompt": "streamed options",
        "stream": True,
        "system": "be kind",
        "options": {"seed": 7},
    }


def test_the_first_line_arrives_before_the_upstream_has_finished(
    gate: GatewayProcess, module_ollama: FakeOllama
) -> None:
    settle(module_ollama)
    finished_before = module_ollama.seen.streams_finished
    # `!held`: the fake sends one chunk, then generates nothing more until released. A gateway that
    # buffers would send nothing, and reading the first line would time out.
    body = {"message": "!held one two three", "model": "smollm:latest"}
    try:
        with httpx.stream("POST", gate.url + "/chat/stream", json=body, timeout=10) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first = json.loads(next(lines))
            assert (first["response"], first["done"]) == ("Echo:", False)
            assert module_ollama.seen.streams_finished == finished_before
            module_ollama.release_held()
            rest = [json.loads(line) for line in lines if line]
    finally:
        module_ollama.release_held()

    assert rest[-1]["done"] is True
    assert "".join(line["response"] for line in [first, *rest]) == "Echo: " + body["message"]
    assert module_ollama.wait_for(lambda seen: seen.streams_finished == finished_before + 1)


def test_a_client_leaving_mid_stream_closes_the_upstream_request(
    gate: GatewayProcess, module_ollama: FakeOllama
) -> None:
    settle(module_ollama)
    finished_before, abandoned_before = (
        module_ollama.seen.streams_finished,
        module_ollama.seen.streams_abandoned,
    )
    # `!long`: 200 chunks, 50 ms apart; the client reads three of them and hangs up.
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", gate.url + "/chat/stream", json={"message": "!long"}) as response,
    ):
        assert response.status_code == 200
        received = []
        for line in response.iter_lines():
            received.append(json.loads(line))
            if len(received) == 3:
                break
    assert [line["done"] for line in received] == [False, False, False]

    assert module_ollama.wait_for(lambda seen: seen.streams_abandoned == abandoned_before + 1)
    assert module_ollama.seen.streams_finished == finished_before


def test_the_gateway_keeps_serving_after_a_client_walked_away(gate: GatewayProcess) -> None:
    for _ in range(2):
        with httpx.stream(
            "POST", gate.url + "/chat/stream", json={"message": "!long"}, timeout=10
        ) as response:
            next(response.iter_lines())

    _, lines = streamed_lines(gate, {"message": "still here"})
    assert "".join(line["response"] for line in lines) == "Echo: still here"


def test_concurrent_streams_do_not_mix(gate: GatewayProcess) -> None:
    prompts = [f"!slow stream number {n}" for n in range(6)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        results = list(pool.map(lambda prompt: streamed_lines(gate, {"message": prompt}), prompts))

    for prompt, (response, lines) in zip(prompts, results, strict=True):
        assert response.status_code == 200
        assert "".join(line["response"] for line in lines) == f"Echo: {prompt}"
        assert lines[-1]["done"] is True


def _dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, rest = out + rest[:size], rest[size + 2 :]


def test_a_client_that_stops_reading_gets_the_whole_stream_once_it_reads_again(gate: GatewayProcess) -> None:
    # A tiny receive window and a pause: the gateway's writes back up until its transport pauses it, and
    # the stream must go on, whole and in order, once the client reads again.
    prompt = " ".join(f"w{i}" for i in range(30_000))
    body = json.dumps({"message": prompt, "model": "smollm:latest"}).encode()
    head = (
        f"POST /chat/stream HTTP/1.1\r\nHost: {gate.host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect((gate.host, gate.port))
        sock.sendall(head + body)
        time.sleep(1.5)
        received = bytearray()
        while data := sock.recv(65536):
            received += data
    status_line, _, rest = bytes(received).partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK"
    lines = [json.loads(line) for line in _dechunk(rest.partition(b"\r\n\r\n")[2]).splitlines() if line]
    assert [line["response"] for line in lines[:-1]] == answer_words(prompt)
    assert lines[-1]["done"] is True
