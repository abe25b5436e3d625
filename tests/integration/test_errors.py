"""Every error row of the API on the real server: bad requests, upstream failures, failures mid-stream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import gateway_per_module
from tests.support.fake_ollama import FakeOllama, free_port
from tests.support.gateway import GatewayProcess

MAX_BODY_BYTES = 2048
ENDPOINTS = ["/chat", "/chat/stream"]


gate = gateway_per_module(
    {"ANON_RATE_LIMIT": "1000/60", "READ_TIMEOUT": "1", "MAX_BODY_BYTES": str(MAX_BODY_BYTES)}
)


@pytest.fixture(scope="module")
def gate_without_ollama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway whose Ollama URL points at a port nobody listens on."""
    closed = f"http://127.0.0.1:{free_port()}"
    env = {"ANON_RATE_LIMIT": "1000/60"}
    with GatewayProcess(tmp_path_factory.mktemp("offline"), ollama_url=closed, env=env) as gateway:
        yield gateway


def post(gate: GatewayProcess, endpoint: str, **kwargs: Any) -> httpx.Response:
    """The whole answer (a stream is read to its end)."""
    return httpx.post(gate.url + endpoint, timeout=10, **kwargs)


def error_detail(response: httpx.Response, status: int) -> str:
    """Assert `response` is a JSON error with `status` and return its `detail`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    return detail


def streamed_lines(gate: GatewayProcess, message: str) -> list[dict[str, Any]]:
    with httpx.stream("POST", gate.url + "/chat/stream", json={"message": message}, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in response.iter_lines() if line]


# -- the request itself is wrong: 400, never 500, and Ollama is never asked ----------------------

MALFORMED_BODIES = {
    "truncated JSON": b'{"message": "hi"',
    "not JSON": b"hello there",
    "empty body": b"",
    "a JSON array": b'["hi"]',
    "a JSON string": b'"hi"',
    "JSON null": b"null",
    "invalid UTF-8": b'{"message": "\xff\xfe"}',
}

INVALID_BODIES: dict[str, Any] = {
    "message is a number": {"message": 5},
    "message is a list": {"message": ["hi"]},
    "message is null": {"message": None},
    "model is a number": {"message": "hi", "model": 3},
    "model is empty": {"message": "hi", "model": ""},
    "system is an object": {"message": "hi", "system": {"role": "x"}},
    "options is a string": {"message": "hi", "options": "hot"},
    "message is missing": {"model": "smollm:latest"},
    "body is an empty object": {},
    "message is empty": {"message": ""},
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("content", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_malformed_json_is_400(
    gate: GatewayProcess, module_ollama: FakeOllama, endpoint: str, content: bytes
) -> None:
    asked_before = len(module_ollama.seen.generate_requests)
    response = post(gate, endpoint, content=content, headers={"Content-Type": "application/json"})

    error_detail(response, 400)
    assert len(module_ollama.seen.generate_requests) == asked_before


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("body", INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
def test_wrong_types_and_missing_or_empty_message_are_400(
    gate: GatewayProcess, module_ollama: FakeOllama, endpoint: str, body: Any
) -> None:
    asked_before = len(module_ollama.seen.generate_requests)
    response = post(gate, endpoint, json=body)

    error_detail(response, 400)
    assert len(module_ollama.seen.generate_requests) == asked_before


def test_a_missing_message_is_named_in_the_detail(gate: GatewayProcess) -> None:
    assert "message" in error_detail(post(gate, "/chat", json={"model": "smollm:latest"}), 400)


# -- body size ----------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_body_over_the_configured_limit_is_413(
    gate: GatewayProcess, module_ollama: FakeOllama, endpoint: str
) -> None:
    asked_before = len(module_ollama.seen.generate_requests)
    response = post(gate, endpoint, json={"message": "x" * MAX_BODY_BYTES})

    error_detail(response, 413)
    assert len(module_ollama.seen.generate_requests) == asked_before


def test_a_chunked_body_over_the_limit_is_413(gate: GatewayProcess) -> None:
    # No Content-Length: the limit must hold while the body is read, not only from the header.
    def body() -> Iterator[bytes]:
        yield b'{"message": "'
        for _ in range(MAX_BODY_BYTES // 64 + 1):
            yield b"y" * 64
        yield b'"}'

    response = post(gate, "/chat", content=body(), headers={"Content-Type": "application/json"})

    error_detail(response, 413)


def test_a_body_just_under_the_limit_is_served(gate: GatewayProcess) -> None:
    message = "z" * (MAX_BODY_BYTES - 100)
    response = post(gate, "/chat", json={"message": message})

    assert response.status_code == 200
    assert response.json()["response"]["response"] == f"Echo: {message}"


# -- Ollama fails before the first chunk: the same JSON errors on both endpoints ------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_unknown_model_is_404_naming_the_model(gate: GatewayProcess, endpoint: str) -> None:
    response = post(gate, endpoint, json={"message": "hi", "model": "no-such-model:7b"})

    assert "no-such-model:7b" in error_detail(response, 404)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_ollama_server_error_is_502_with_its_error_text(gate: GatewayProcess, endpoint: str) -> None:
    response = post(gate, endpoint, json={"message": "!error500"})

    assert "llama runner process has terminated: exit status 2" in error_detail(response, 502)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_ollama_busy_is_503_with_its_error_text(gate: GatewayProcess, endpoint: str) -> None:
    response = post(gate, endpoint, json={"message": "!busy"})

    assert "server busy" in error_detail(response, 503)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_ollama_rejecting_the_request_is_a_client_error_not_a_500(
    gate: GatewayProcess, endpoint: str
) -> None:
    response = post(gate, endpoint, json={"message": "!bad"})

    assert "invalid options" in error_detail(response, 400)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_ollama_unreachable_is_503_saying_it_is_offline(
    gate_without_ollama: GatewayProcess, endpoint: str
) -> None:
    response = post(gate_without_ollama, endpoint, json={"message": "anyone there"})

    assert "offline" in error_detail(response, 503).lower()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_ollama_silent_past_the_read_timeout_is_504(gate: GatewayProcess, endpoint: str) -> None:
    response = post(gate, endpoint, json={"message": "!hang"})

    error_detail(response, 504)


# -- Ollama fails after the stream began: one final error line -----------------------------------


def assert_ends_with_one_error_line(gate: GatewayProcess, prompt: str) -> str:
    """The fake sends two chunks before failing: both arrive, then exactly one error line."""
    *chunks, last = streamed_lines(gate, prompt)
    assert [chunk["response"] for chunk in chunks] == ["Echo:", " " + prompt]
    assert all(chunk["done"] is False and "error" not in chunk for chunk in chunks)
    assert set(last) == {"error", "done"} and last["done"] is True
    assert isinstance(last["error"], str) and last["error"]
    return str(last["error"])


def test_an_error_line_from_ollama_ends_the_stream_with_its_text(gate: GatewayProcess) -> None:
    error = assert_ends_with_one_error_line(gate, "!errorline")

    assert error == "an error was encountered while running the model"


def test_a_cut_upstream_connection_ends_the_stream_with_an_error_line(gate: GatewayProcess) -> None:
    assert_ends_with_one_error_line(gate, "!cut")


def test_an_upstream_stalling_past_the_read_timeout_ends_the_stream_with_an_error_line(
    gate: GatewayProcess,
) -> None:
    assert_ends_with_one_error_line(gate, "!stall")


def test_a_native_stream_stalling_past_the_read_timeout_ends_with_an_error_line(gate: GatewayProcess) -> None:
    body = {"model": "smollm:latest", "prompt": "!stall"}
    with httpx.stream("POST", gate.url + "/api/generate", json=body, timeout=10) as response:
        assert response.status_code == 200
        *chunks, last = [json.loads(line) for line in response.iter_lines() if line]

    assert [chunk["done"] for chunk in chunks] == [False, False]
    assert last["error"] == "Ollama did not answer within the read timeout"


def test_the_gateway_still_serves_after_every_failure(gate: GatewayProcess) -> None:
    # Runs last in this module: none of the failures above left the gateway or its upstream pool broken.
    response = post(gate, "/chat", json={"message": "all good"})

    assert response.status_code == 200
    assert response.json()["response"]["response"] == "Echo: all good"
