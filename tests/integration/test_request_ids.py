"""Request ids on the real gateway: a client's sane X-Request-ID is kept, otherwise one is made; every
kind of answer carries it, the usage row stores it. And the JSON log format: every record one JSON object
per line, access lines with their fields, never a key or a token."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import gateway_per_module
from tests.support.fake_ollama import FakeOllama
from tests.support.fake_ollama_openai import FakeOllamaServer
from tests.support.gateway import HIGH_LIMITS, GatewayProcess

MADE = re.compile(r"[0-9a-f]{12}-[0-9]+")
STRANGER = {"X-Forwarded-For": "203.0.113.9"}

# Members unlimited; anonymous callers 2 a minute per address (each test that needs one uses its own).
gate = gateway_per_module(HIGH_LIMITS | {"ANON_RATE_LIMIT": "2/60"}, upstream="module_ollama_server")


@pytest.fixture(scope="module")
def member(gate: GatewayProcess) -> dict[str, str]:
    return {"X-API-Key": gate.create_key("traced")["key"]}


def client_from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


Call = Callable[[GatewayProcess, dict[str, str]], httpx.Response]


def _post(path: str, body: Any) -> Call:
    def call(gate: GatewayProcess, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(gate.url + path, json=body, headers=headers, timeout=10)

    return call


def _get(path: str) -> Call:
    def call(gate: GatewayProcess, headers: dict[str, str]) -> httpx.Response:
        return httpx.get(gate.url + path, headers=headers, timeout=10)

    return call


def _stream(path: str, body: Any) -> Call:
    def call(gate: GatewayProcess, headers: dict[str, str]) -> httpx.Response:
        with httpx.stream("POST", gate.url + path, json=body, headers=headers, timeout=10) as response:
            response.read()
        return response

    return call


def _malformed(gate: GatewayProcess, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(gate.url + "/chat", content=b"{not json", headers=headers, timeout=10)


# (what, the call, whether it is made as the member, the status it gets)
ANSWERS: dict[str, tuple[Call, bool, int]] = {
    "chat": (_post("/chat", {"message": "hi"}), True, 200),
    "chat stream": (_stream("/chat/stream", {"message": "hi"}), True, 200),
    "ollama generate (streamed pass-through)": (
        _stream("/api/generate", {"model": "smollm:latest", "prompt": "hi"}),
        True,
        200,
    ),
    "ollama chat (whole pass-through)": (
        _post("/api/chat", {"model": "smollm:latest", "messages": [], "stream": False}),
        True,
        200,
    ),
    "openai chat": (
        _post(
            "/v1/chat/completions", {"model": "smollm:latest", "messages": [{"role": "user", "content": "x"}]}
        ),
        True,
        200,
    ),
    "ollama listing": (_get("/api/tags"), True, 200),
    "openai listing": (_get("/v1/models"), True, 200),
    "unknown model": (
        _post("/api/generate", {"model": "nope:1b", "prompt": "x", "stream": False}),
        True,
        404,
    ),
    "malformed body": (_malformed, True, 400),
    "wrong key": (_post("/chat", {"message": "hi"}), False, 401),
    "unknown path": (_get("/no/such/path"), True, 404),
    "wrong method": (_get("/chat"), True, 405),
    "usage": (_get("/api/usage"), True, 200),
    "usage export": (_get("/api/usage/export"), True, 200),
    "status": (_get("/api/status"), False, 200),
    "model management refused": (_post("/api/pull", {"model": "x"}), True, 403),
}


def headers_for(case: str, member: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    _, as_member, _ = ANSWERS[case]
    key = member if as_member else {"X-API-Key": "oa-" + "w" * 43}
    return (key if case != "status" else {}) | extra


@pytest.mark.parametrize("case", list(ANSWERS))
def test_a_sent_request_id_comes_back_on_every_kind_of_answer(
    gate: GatewayProcess, member: dict[str, str], case: str
) -> None:
    call, _, status = ANSWERS[case]
    sent = f"client-{case.replace(' ', '_')}-7f3a"

    response = call(gate, headers_for(case, member, {"X-Request-ID": sent}))

    assert response.status_code == status, response.text
    assert response.headers["x-request-id"] == sent


@pytest.mark.parametrize("case", list(ANSWERS))
def test_a_request_id_is_made_when_none_is_sent(
    gate: GatewayProcess, member: dict[str, str], case: str
) -> None:
    call, _, status = ANSWERS[case]

    first = call(gate, headers_for(case, member, {}))
    second = call(gate, headers_for(case, member, {}))

    assert first.status_code == status
    assert MADE.fullmatch(first.headers["x-request-id"]), first.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert len(first.headers.get_list("x-request-id")) == 1


def test_a_429_carries_the_request_id(gate: GatewayProcess) -> None:
    with client_from("127.0.0.61") as client:
        statuses = [client.post(gate.url + "/chat", json={"message": "hi"}).status_code for _ in range(2)]
        refused = client.post(
            gate.url + "/chat", json={"message": "hi"}, headers={"X-Request-ID": "limited-1"}
        )
        made = client.post(gate.url + "/chat", json={"message": "hi"})

    assert statuses == [200, 200]
    assert refused.status_code == 429 and refused.headers["x-request-id"] == "limited-1"
    assert made.status_code == 429 and MADE.fullmatch(made.headers["x-request-id"])


@pytest.mark.parametrize(
    "sent",
    [b"x" * 129, b"has space", b"tab\there", b"caf\xc3\xa9", b""],
    ids=["too-long", "space", "tab", "non-ascii", "empty"],
)
def test_an_unusable_request_id_is_replaced(
    gate: GatewayProcess, member: dict[str, str], sent: bytes
) -> None:
    response = httpx.post(
        gate.url + "/chat",
        json={"message": "hi"},
        headers=[
            *((name.encode(), value.encode()) for name, value in member.items()),
            (b"X-Request-ID", sent),
        ],
        timeout=10,
    )

    assert response.status_code == 200
    assert MADE.fullmatch(response.headers["x-request-id"])


def test_the_longest_acceptable_request_id_is_kept(gate: GatewayProcess, member: dict[str, str]) -> None:
    sent = "~!#" + "a" * 124 + "z"  # 128 visible characters, punctuation included
    response = httpx.post(gate.url + "/chat", json={"message": "hi"}, headers=member | {"X-Request-ID": sent})
    assert response.headers["x-request-id"] == sent


def test_the_usage_row_stores_the_request_id_it_was_answered_with(gate: GatewayProcess) -> None:
    key = {"X-API-Key": gate.create_key("row-ids")["key"]}
    sent = httpx.post(
        gate.url + "/chat", json={"message": "one"}, headers=key | {"X-Request-ID": "trace-0001"}
    )
    made = httpx.post(gate.url + "/chat/stream", json={"message": "two"}, headers=key)
    relayed = httpx.post(
        gate.url + "/api/generate",
        json={"model": "smollm:latest", "prompt": "three"},
        headers=key,
        timeout=10,
    )
    failed = httpx.post(
        gate.url + "/chat", json={"message": "!error500"}, headers=key | {"X-Request-ID": "fail-9"}
    )

    rows = gate.usage_rows(4, "row-ids")
    by_endpoint = {(row["endpoint"], row["status"]): row["request_id"] for row in rows}
    assert by_endpoint == {
        ("/chat", 200): "trace-0001",
        ("/chat/stream", 200): made.headers["x-request-id"],
        ("/api/generate", 200): relayed.headers["x-request-id"],
        ("/chat", 502): "fail-9",
    }
    assert sent.headers["x-request-id"] == "trace-0001" and failed.status_code == 502


def test_the_shutdown_answer_carries_the_request_id(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    """A request still running at the shutdown deadline is answered 503 by the server itself."""
    gateway = GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env={"SHUTDOWN_TIMEOUT": "1"}).start()

    async def hung() -> httpx.Response:
        async with httpx.AsyncClient(timeout=60) as client:
            return await client.post(
                gateway.url + "/chat",
                json={"message": "!hang at shutdown"},
                headers={"X-Request-ID": "last-one"},
            )

    async def run() -> httpx.Response:
        task = asyncio.create_task(hung())
        for _ in range(200):
            if fake_ollama.seen.requests_with_prompt("!hang at shutdown"):
                break
            await asyncio.sleep(0.05)
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        return await task

    try:
        answer = asyncio.run(run())
    finally:
        gateway.terminate()
    assert answer.status_code == 503
    assert answer.headers["x-request-id"] == "last-one"


# -- the JSON log format -----------------------------------------------------------------------------

ADMIN_TOKEN = "admin-token-that-must-never-be-logged-91c2"
ACCESS_KEYS = {
    "method",
    "path",
    "status",
    "duration_ms",
    "client_ip",
    "user",
    "plan",
    "model",
    "queue_ms",
    "request_id",
}


@pytest.fixture
def json_log(tmp_path: Path, module_ollama_server: FakeOllamaServer) -> Iterator[tuple[GatewayProcess, str]]:
    """A gateway logging JSON at info, with an admin token, and one member's key."""
    env = {"LOG_FORMAT": "json", "ADMIN_TOKEN": ADMIN_TOKEN} | HIGH_LIMITS
    gateway = GatewayProcess(tmp_path, ollama_url=module_ollama_server.url, env=env, log_level="info").start()
    try:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        secret = gateway.create_key("logged", headers=admin)["key"]
        yield gateway, secret
    finally:
        gateway.terminate()


def log_records(gateway: GatewayProcess) -> list[dict[str, Any]]:
    """Every line the gateway wrote, parsed: all but the start-up banner (stdout) must be JSON."""
    records = []
    for line in gateway.log().splitlines():
        if line.startswith(("ollama-gate listening on ", "  OLLAMA_GATE_")) or not line:
            continue
        record = json.loads(line)  # fails the test on any line that is not one JSON object
        assert isinstance(record, dict), line
        records.append(record)
    return records


def test_json_logs_are_one_object_per_record_with_access_fields_and_no_secret(
    json_log: tuple[GatewayProcess, str],
) -> None:
    gateway, secret = json_log
    chat = httpx.post(
        gateway.url + "/chat",
        json={"message": "log me"},
        headers={"X-API-Key": secret, "X-Request-ID": "json-log-1"},
        timeout=10,
    )
    streamed = httpx.post(
        gateway.url + "/api/generate",
        json={"model": "llama3.2:1b", "prompt": "hi"},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    wrong = httpx.post(
        gateway.url + "/chat", json={"message": "x"}, headers={"X-API-Key": secret[:-4] + "AAAA"}
    )
    listed = httpx.get(gateway.url + "/api/usage", headers={"X-Admin-Token": ADMIN_TOKEN}, timeout=10)
    crooked = httpx.get(gateway.url + "/api/usage%0Aforged line", timeout=10)
    assert [chat.status_code, streamed.status_code, wrong.status_code, listed.status_code] == [
        200,
        200,
        401,
        200,
    ]
    assert crooked.status_code == 404
    gateway.terminate()  # everything it logged is flushed

    records = log_records(gateway)
    text = gateway.log()
    assert secret not in text and secret[:-4] not in text and ADMIN_TOKEN not in text
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= set(record), record
        assert record["timestamp"].endswith("Z")
    assert any(r["logger"].startswith("uvicorn") for r in records)  # the server's own records too
    access = {r["request_id"]: r for r in records if r["logger"] == "ollama_gate.access"}
    assert all(set(r) >= ACCESS_KEYS for r in access.values())
    first = access["json-log-1"]
    assert {k: first[k] for k in ACCESS_KEYS - {"duration_ms", "queue_ms"}} == {
        "method": "POST",
        "path": "/chat",
        "status": 200,
        "client_ip": "127.0.0.1",
        "user": "logged",
        "plan": "member",
        "model": "smollm:latest",
        "request_id": "json-log-1",
    }
    assert first["duration_ms"] > 0 and first["queue_ms"] >= 0
    relayed = access[streamed.headers["x-request-id"]]
    assert (relayed["path"], relayed["model"], relayed["user"]) == ("/api/generate", "llama3.2:1b", "logged")
    refused = access[wrong.headers["x-request-id"]]
    assert (refused["status"], refused["user"], refused["model"]) == (401, None, None)
    forged = access[crooked.headers["x-request-id"]]
    assert forged["path"] == "/api/usage\nforged line"  # escaped inside its JSON line, not a line of its own


def test_text_access_lines_name_the_request_id_and_stay_one_line(
    tmp_path: Path, module_ollama_server: FakeOllamaServer
) -> None:
    gateway = GatewayProcess(tmp_path, ollama_url=module_ollama_server.url, log_level="info").start()
    try:
        kept = httpx.post(
            gateway.url + "/chat", json={"message": "hi"}, headers={"X-Request-ID": "text-log-7"}
        )
        crooked = httpx.get(gateway.url + "/api/usage%0A127.0.0.1 forged", timeout=10)
    finally:
        gateway.terminate()

    assert kept.status_code == 200 and crooked.status_code == 404
    lines = gateway.log().splitlines()
    assert any(
        '"POST /chat HTTP/1.1" 200' in line and line.endswith(" request_id=text-log-7") for line in lines
    )
    (forged,) = [line for line in lines if crooked.headers["x-request-id"] in line]
    assert "/api/usage\\n127.0.0.1 forged" in forged  # the line break escaped, not a line of its own
    assert not any(line.startswith("127.0.0.1 forged") for line in lines)
