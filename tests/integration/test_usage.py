"""Usage rows on the real gateway (SQLite): what is recorded, what is only counted, and who reads what."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.integration.conftest import gateway_per_module
from tests.support.fake_ollama import FakeOllama, answer_words
from tests.support.gateway import HIGH_LIMITS, USAGE_POLLS, GatewayProcess

ROW_FIELDS = {
    "id",
    "timestamp",
    "user",
    "tier",
    "key_id",
    "client_ip",
    "endpoint",
    "model",
    "status",
    "outcome",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "plan",
    "queue_ms",
    "request_id",
}

# No admin token (this process is the admin through loopback); limits out of the way.
gate = gateway_per_module(HIGH_LIMITS)


def chat(
    gate: GatewayProcess, message: str, key: str | None = None, endpoint: str = "/chat", **extra: str
) -> httpx.Response:
    return gate.chat(message, {"X-API-Key": key} if key else {}, endpoint, **extra)


def usage(gate: GatewayProcess, headers: dict[str, str] | None = None, **params: str | int) -> httpx.Response:
    return httpx.get(gate.url + "/api/usage", params=params, headers=headers or {}, timeout=10)


def rows_of(gate: GatewayProcess, user_id: str, expected: int) -> list[dict[str, Any]]:
    """The user's rows, newest first, once `expected` of them are stored (or the polls run out)."""
    rows = gate.usage_rows(expected, user_id)
    assert len(rows) == expected, rows
    return rows


def usage_status(gate: GatewayProcess) -> dict[str, Any]:
    status: dict[str, Any] = gate.status()["usage"]
    return status


def settled_status(gate: GatewayProcess) -> dict[str, Any]:
    """The status usage block once the writer has stored every pending row."""
    status = usage_status(gate)
    for _ in range(USAGE_POLLS):
        if status["usage_rows_pending"] == 0:
            break
        time.sleep(0.1)
        status = usage_status(gate)
    return status


def assert_utc_timestamp(text: str) -> None:
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() == UTC.utcoffset(None), text


# -- what a row holds ---------------------------------------------------------------------------------


def test_json_and_stream_requests_are_recorded_with_their_token_counts(gate: GatewayProcess) -> None:
    key = gate.create_key("recorded")
    json_prompt, stream_prompt = "one two three", "four five"

    assert chat(gate, json_prompt, key["key"]).status_code == 200
    streamed = chat(gate, stream_prompt, key["key"], "/chat/stream", model="llama3.2:1b")
    assert streamed.status_code == 200

    stream_row, json_row = rows_of(gate, "recorded", 2)
    assert set(json_row) == ROW_FIELDS and set(stream_row) == ROW_FIELDS
    common = {
        "user": "recorded",
        "tier": "member",
        "key_id": key["id"],
        "client_ip": "127.0.0.1",
        "status": 200,
    }
    assert json_row | common == json_row and stream_row | common == stream_row
    assert (json_row["endpoint"], json_row["model"], json_row["outcome"]) == ("/chat", "smollm:latest", "ok")
    assert (stream_row["endpoint"], stream_row["model"], stream_row["outcome"]) == (
        "/chat/stream",
        "llama3.2:1b",
        "ok",
    )
    assert (json_row["prompt_tokens"], json_row["completion_tokens"]) == (3, len(answer_words(json_prompt)))
    assert (stream_row["prompt_tokens"], stream_row["completion_tokens"]) == (
        2,
        len(answer_words(stream_prompt)),
    )
    for row in (json_row, stream_row):
        assert_utc_timestamp(row["timestamp"])
        assert isinstance(row["latency_ms"], int | float) and row["latency_ms"] >= 0
    assert stream_row["id"] > json_row["id"]
    assert stream_row["timestamp"] >= json_row["timestamp"]


def test_an_anonymous_row_names_the_client_address_and_no_key(gate: GatewayProcess) -> None:
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.31"), timeout=10) as client:
        assert client.post(gate.url + "/chat", json={"message": "who am i"}).status_code == 200

    (row,) = rows_from(gate, "127.0.0.31", 1)
    assert (row["user"], row["tier"], row["key_id"], row["outcome"]) == ("anonymous", "anonymous", None, "ok")
    assert (row["endpoint"], row["status"]) == ("/chat", 200)


def rows_from(gate: GatewayProcess, client_ip: str, expected: int) -> list[dict[str, Any]]:
    """The rows of one client address, once `expected` of them are stored."""
    rows = gate.usage_rows(expected, where=lambda row: row["client_ip"] == client_ip)
    assert len(rows) == expected, rows
    return rows


def test_a_stream_the_client_walks_away_from_is_recorded_as_cancelled(gate: GatewayProcess) -> None:
    key = gate.create_key("walker")

    with httpx.stream(
        "POST",
        gate.url + "/chat/stream",
        json={"message": "!long"},
        headers={"X-API-Key": key["key"]},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [next(lines) for _ in range(3)]  # the generation is under way ...
    # ... and the client is gone, long before its 200 chunks would have ended.

    assert all('"done":false' in line for line in received)
    (row,) = rows_of(gate, "walker", 1)
    assert (row["endpoint"], row["outcome"], row["status"]) == ("/chat/stream", "cancelled", 200)
    # Charged (and recorded) the chunks it relayed: at least those the client read, far from all 200.
    assert 3 <= row["completion_tokens"] < 200
    assert row["prompt_tokens"] is None


def test_upstream_failures_are_recorded_as_upstream_errors(gate: GatewayProcess) -> None:
    key = gate.create_key("unlucky")["key"]

    failed = chat(gate, "!error500", key)
    broken_stream = chat(gate, "!errorline", key, "/chat/stream")

    assert failed.status_code == 502
    assert broken_stream.status_code == 200 and "error" in broken_stream.text.splitlines()[-1]
    stream_row, json_row = rows_of(gate, "unlucky", 2)
    assert (json_row["endpoint"], json_row["outcome"], json_row["status"]) == ("/chat", "upstream_error", 502)
    assert (stream_row["endpoint"], stream_row["outcome"], stream_row["status"]) == (
        "/chat/stream",
        "upstream_error",
        200,
    )


def test_rejections_are_counted_in_the_status_but_are_not_rows(
    tmp_path_factory: pytest.TempPathFactory, module_ollama: FakeOllama
) -> None:
    env = {"ANON_RATE_LIMIT": "2/60"}
    with GatewayProcess(
        tmp_path_factory.mktemp("rejections"), ollama_url=module_ollama.url, env=env
    ) as small:
        key = small.create_key("rejected-later")
        answered = [chat(small, "hi").status_code for _ in range(5)]
        unauthorized = [
            chat(small, "hi", "oa-" + "u" * 43).status_code,
            chat(small, "hi", "not-a-key").status_code,
            chat(small, "hi", "oa-" + "v" * 43, "/chat/stream").status_code,
        ]
        member = chat(small, "hi", key["key"]).status_code
        status = settled_status(small)
        rows = usage(small, limit=1000).json()["logs"]

    assert answered == [200, 200, 429, 429, 429]
    assert unauthorized == [401, 401, 401] and member == 200
    assert (status["rejected_unauthorized"], status["rejected_rate_limited"]) == (3, 3)
    assert status["total_requests"] == len(rows) == 3
    assert sorted(row["user"] for row in rows) == ["anonymous", "anonymous", "rejected-later"]


def test_total_requests_in_the_status_equals_the_stored_rows(gate: GatewayProcess) -> None:
    for index in range(5):
        chat(gate, f"tally {index}")

    status = settled_status(gate)
    listed = usage(gate, limit=1000).json()

    assert status["usage_rows_pending"] == 0
    assert status["total_requests"] == listed["count"] == len(listed["logs"]) >= 5


# -- reading usage ------------------------------------------------------------------------------------


def test_usage_is_newest_first_filtered_by_user_and_limited(gate: GatewayProcess) -> None:
    first, second = gate.create_key("filter-a"), gate.create_key("filter-b")
    for index in range(3):
        chat(gate, f"a {index}", first["key"])
        chat(gate, f"b {index}", second["key"])

    only_a = rows_of(gate, "filter-a", 3)
    rows_of(gate, "filter-b", 3)
    newest_a = usage(gate, user_id="filter-a", limit=1).json()
    newest_overall = usage(gate, limit=1).json()

    assert {row["user"] for row in only_a} == {"filter-a"}
    assert [row["id"] for row in only_a] == sorted((row["id"] for row in only_a), reverse=True)
    assert newest_a == {"logs": [only_a[0]], "count": 1, "next_cursor": str(only_a[0]["id"])}
    assert newest_overall["count"] == 1 and newest_overall["logs"][0]["id"] >= only_a[0]["id"]


def test_usage_shows_50_rows_unless_told_otherwise(gate: GatewayProcess) -> None:
    for index in range(51):
        chat(gate, f"filler {index}")
    settled_status(gate)

    default = usage(gate).json()
    everything = usage(gate, limit=1000).json()

    assert default["count"] == len(default["logs"]) == 50
    assert everything["count"] > 50
    assert default["logs"] == everything["logs"][:50]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "abc"},
        {"limit": "-1"},
        {"limit": "1.5"},
        {"limit": ""},
        {"user_id": "not valid"},
    ],
    ids=["zero", "too-many", "word", "negative", "fraction", "empty", "bad-user-id"],
)
def test_bad_usage_parameters_are_400(gate: GatewayProcess, params: dict[str, str]) -> None:
    response = httpx.get(gate.url + "/api/usage", params=params, timeout=10)

    assert response.status_code == 400, response.text
    assert response.json()["detail"]


def test_limits_at_the_edges_are_accepted(gate: GatewayProcess) -> None:
    assert usage(gate, limit=1).status_code == 200
    assert usage(gate, limit=1000).status_code == 200


def test_a_member_sees_only_its_own_rows(gate: GatewayProcess) -> None:
    mine, theirs = gate.create_key("private-a"), gate.create_key("private-b")
    chat(gate, "mine", mine["key"])
    chat(gate, "mine too", mine["key"], "/chat/stream")
    chat(gate, "theirs", theirs["key"])
    rows_of(gate, "private-a", 2)
    rows_of(gate, "private-b", 1)
    as_member = {"X-API-Key": mine["key"]}

    own = usage(gate, as_member, limit=1000)
    own_named = usage(gate, as_member, user_id="private-a")
    other = usage(gate, as_member, user_id="private-b")

    assert own.status_code == 200
    assert own.json()["count"] == 2 and {row["user"] for row in own.json()["logs"]} == {"private-a"}
    assert own_named.json() == own.json()
    assert other.status_code == 403


@pytest.mark.parametrize(
    "headers",
    [{"X-Forwarded-For": "203.0.113.5"}, {"Forwarded": "for=203.0.113.5"}],
    ids=["x-forwarded-for", "forwarded"],
)
def test_a_remote_caller_without_a_key_cannot_read_usage(
    gate: GatewayProcess, headers: dict[str, str]
) -> None:
    response = usage(gate, headers)

    assert response.status_code == 403
    assert "OLLAMA_GATE_ADMIN_TOKEN" in response.json()["detail"]
    assert "logs" not in response.json()
