"""Chat through the LLM port: the JSON answer, the relayed stream, its failures, and one usage row each."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gate.adapters.memory_stores import InMemoryUsageStore
from ollama_gate.domain.chat import ChatRequest
from ollama_gate.domain.errors import (
    GatewayError,
    ModelNotFound,
    UpstreamBusy,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ollama_gate.domain.identity import Caller, Tier
from ollama_gate.domain.usage import Outcome, UsageRecord
from ollama_gate.services.chat import ChatService
from ollama_gate.services.usage_recorder import UsageRecorder
from tests.unit.fakes import FakeClock, FakeLLM, ScriptedResponse, ticket

MODEL = "smollm:latest"
ALICE = Caller.member("alice", 7, "10.0.0.1")
ANONYMOUS = Caller.anonymous("10.0.0.2")
FINAL = {
    "model": MODEL,
    "response": "",
    "done": True,
    "done_reason": "stop",
    "context": [1, 2, 3],
    "total_duration": 1_000_000,
    "prompt_eval_count": 4,
    "eval_count": 3,
}


def line(**fields: Any) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def words(*texts: str) -> list[bytes]:
    return [line(model=MODEL, response=text, done=False) for text in texts]


FINAL_LINE = line(**FINAL)


class Harness:
    def __init__(self, respond: ScriptedResponse | None = None) -> None:
        self.clock = FakeClock()
        self.store = InMemoryUsageStore()
        self.recorder = UsageRecorder(self.store, self.clock)
        self.llm = FakeLLM(None if respond is None else self.answer)
        self.scripted = respond
        self.service = ChatService(self.llm, self.recorder, self.clock, default_model=MODEL)

    def answer(self, path: str, body: bytes) -> ScriptedResponse:
        assert self.scripted is not None
        self.clock.advance(0.25)  # the upstream takes a quarter of a second to answer
        return self.scripted

    def sent(self) -> dict[str, Any]:
        [(path, body)] = self.llm.calls
        assert path == "/api/generate"
        decoded: dict[str, Any] = json.loads(body)
        return decoded

    async def rows(self) -> list[UsageRecord]:
        assert await self.recorder.flush()
        return self.store.rows


async def collect(stream: AsyncIterator[bytes]) -> list[dict[str, Any]]:
    raw = [chunk async for chunk in stream]
    assert all(chunk.endswith(b"\n") and chunk.count(b"\n") == 1 for chunk in raw)
    return [json.loads(chunk) for chunk in raw]


def is_closed(upstream: ScriptedResponse) -> bool:
    # A function, so that the type checker does not pin `closed` to what an earlier assert saw.
    return upstream.closed


# -- JSON answers ------------------------------------------------------------------------------------


async def test_the_json_answer_names_the_caller_and_drops_context() -> None:
    answer = {**FINAL, "response": "Machine learning is..."}
    harness = Harness(ScriptedResponse(200, [line(**answer)]))
    body = json.loads(await harness.service.complete(ticket(ALICE), ChatRequest("What is ML?"), "/chat"))
    assert set(body) == {"user", "tier", "plan", "response"}
    assert (body["user"], body["tier"], body["plan"]) == ("alice", "member", "member")
    assert body["response"] == {k: v for k, v in answer.items() if k != "context"}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=6),
    st.none() | st.integers(0, 10**6),
    st.none() | st.integers(0, 10**6),
    st.lists(st.integers(0, 200_000), max_size=50),
)
async def test_every_field_of_the_answer_is_relayed_as_it_came_but_context(
    extra: dict[str, Any], prompt: int | None, completion: int | None, context: list[int]
) -> None:
    answer = {**extra, "context": context}
    answer |= {"prompt_eval_count": prompt} if prompt is not None else {}
    answer |= {"eval_count": completion} if completion is not None else {}
    harness = Harness(ScriptedResponse(200, [json.dumps(answer, ensure_ascii=False).encode()]))
    body = json.loads(await harness.service.complete(ticket(ALICE), ChatRequest("hi"), "/chat"))
    assert body["response"] == {k: v for k, v in answer.items() if k != "context"}
    [row] = await harness.rows()
    assert (row.prompt_tokens, row.completion_tokens) == (prompt, completion)


async def test_an_answer_whose_text_is_not_utf8_is_502() -> None:
    harness = Harness(ScriptedResponse(200, [b'{"response":"caf\xe9","done":true}']))
    with pytest.raises(UpstreamError, match="unreadable"):
        await harness.service.complete(ticket(ANONYMOUS), ChatRequest("hi"), "/chat")
    [row] = await harness.rows()
    assert (row.status, row.outcome) == (502, Outcome.UPSTREAM_ERROR)


async def test_the_request_sent_to_ollama() -> None:
    harness = Harness(ScriptedResponse(200, [FINAL_LINE]))
    await harness.service.complete(ticket(ANONYMOUS), ChatRequest("hi"), "/chat")
    assert harness.sent() == {"model": MODEL, "prompt": "hi", "stream": False}


async def test_model_system_and_options_are_passed_on() -> None:
    harness = Harness(ScriptedResponse(200, [FINAL_LINE]))
    request = ChatRequest("hi", model="llama3.2:1b", system="be brief", options={"temperature": 0})
    await harness.service.open_stream(ticket(ANONYMOUS), request, "/chat/stream")
    assert harness.sent() == {
        "model": "llama3.2:1b",
        "prompt": "hi",
        "stream": True,
        "system": "be brief",
        "options": {"temperature": 0},
    }


async def test_a_json_answer_is_one_ok_usage_row_with_token_counts() -> None:
    harness = Harness(ScriptedResponse(200, [FINAL_LINE]))
    await harness.service.complete(ticket(ALICE), ChatRequest("hi"), "/chat")
    [row] = await harness.rows()
    assert (row.user, row.tier, row.key_id, row.client_ip) == ("alice", Tier.MEMBER, 7, "10.0.0.1")
    assert (row.endpoint, row.model, row.status, row.outcome) == ("/chat", MODEL, 200, Outcome.OK)
    assert (row.prompt_tokens, row.completion_tokens) == (4, 3)
    assert row.latency_ms == 250.0
    assert row.timestamp == harness.clock.now()


async def test_missing_token_counts_are_null() -> None:
    harness = Harness(ScriptedResponse(200, [line(model=MODEL, response="x", done=True)]))
    await harness.service.complete(ticket(ANONYMOUS), ChatRequest("hi"), "/chat")
    [row] = await harness.rows()
    assert (row.prompt_tokens, row.completion_tokens) == (None, None)
    assert row.user == "anonymous" and row.key_id is None


UPSTREAM_FAILURES = [
    (404, b'{"error":"model \'nope\' not found"}', ModelNotFound, "model 'nope' not found"),
    (400, b'{"error":"invalid options"}', UpstreamRejected, "invalid options"),
    (500, b'{"error":"llama runner crashed"}', UpstreamError, "llama runner crashed"),
    (502, b"<html>bad gateway</html>", UpstreamError, "bad gateway"),
    (
        503,
        b'{"error":"server busy, please try again.  maximum pending requests exceeded"}',
        UpstreamBusy,
        "server busy",
    ),
]


@pytest.mark.parametrize(("status", "body", "error", "detail"), UPSTREAM_FAILURES)
@pytest.mark.parametrize("endpoint", ["/chat", "/chat/stream"])
async def test_upstream_statuses_map_to_gateway_errors(
    status: int, body: bytes, error: type[GatewayError], detail: str, endpoint: str
) -> None:
    harness = Harness(ScriptedResponse(status, [body]))
    request = ChatRequest("hi", model="nope")
    with pytest.raises(error, match=detail) as raised:
        if endpoint == "/chat":
            await harness.service.complete(ticket(ANONYMOUS), request, endpoint)
        else:
            await harness.service.open_stream(ticket(ANONYMOUS), request, endpoint)
    assert type(raised.value) is error
    [row] = await harness.rows()
    assert (row.status, row.outcome, row.endpoint, row.model) == (
        raised.value.status,
        Outcome.UPSTREAM_ERROR,
        endpoint,
        "nope",
    )


@pytest.mark.parametrize("endpoint", ["/chat", "/chat/stream"])
async def test_ollama_offline_is_503_and_a_usage_row(endpoint: str) -> None:
    harness = Harness()
    with pytest.raises(UpstreamUnavailable) as raised:
        if endpoint == "/chat":
            await harness.service.complete(ticket(ANONYMOUS), ChatRequest("hi"), endpoint)
        else:
            await harness.service.open_stream(ticket(ANONYMOUS), ChatRequest("hi"), endpoint)
    assert raised.value.status == 503
    [row] = await harness.rows()
    assert (row.status, row.outcome) == (503, Outcome.UPSTREAM_ERROR)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"text"'])
async def test_an_unreadable_json_answer_is_502(body: bytes) -> None:
    harness = Harness(ScriptedResponse(200, [body]))
    with pytest.raises(UpstreamError):
        await harness.service.complete(ticket(ANONYMOUS), ChatRequest("hi"), "/chat")
    [row] = await harness.rows()
    assert (row.status, row.outcome) == (502, Outcome.UPSTREAM_ERROR)


class HangingResponse(ScriptedResponse):
    """Sends its lines, then nothing more, ever (until cancelled)."""

    async def read(self) -> bytes:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def lines(self) -> AsyncIterator[bytes]:
        async for chunk in super().lines():
            yield chunk
        await asyncio.Event().wait()


async def test_a_json_request_cancelled_by_the_client_is_a_cancelled_row() -> None:
    harness = Harness(HangingResponse(200, []))
    task = asyncio.create_task(harness.service.complete(ticket(ANONYMOUS), ChatRequest("hi"), "/chat"))
    for _ in range(10):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [row] = await harness.rows()
    assert (row.status, row.outcome) == (499, Outcome.CANCELLED)


# -- Streams -----------------------------------------------------------------------------------------


async def test_a_stream_relays_every_chunk_and_strips_context_from_the_last() -> None:
    upstream = ScriptedResponse(200, [*words("Hello", "!"), FINAL_LINE])
    harness = Harness(upstream)
    chunks = await collect(
        (await harness.service.open_stream(ticket(ALICE), ChatRequest("hi"), "/chat/stream")).lines()
    )
    assert chunks == [
        {"model": MODEL, "response": "Hello", "done": False},
        {"model": MODEL, "response": "!", "done": False},
        {k: v for k, v in FINAL.items() if k != "context"},
    ]
    assert upstream.closed
    [row] = await harness.rows()
    assert (row.status, row.outcome, row.endpoint) == (200, Outcome.OK, "/chat/stream")
    assert (row.prompt_tokens, row.completion_tokens) == (4, 3)


async def test_a_final_chunk_whose_text_is_not_utf8_ends_the_stream_with_an_error_line() -> None:
    upstream = ScriptedResponse(200, [*words("Hello"), b'{"response":"caf\xe9","done":true}'])
    harness = Harness(upstream)
    chunks = await collect(
        (await harness.service.open_stream(ticket(ALICE), ChatRequest("hi"), "/chat/stream")).lines()
    )
    assert chunks == [
        {"model": MODEL, "response": "Hello", "done": False},
        {"error": "Ollama sent an unreadable chunk", "done": True},
    ]
    [row] = await harness.rows()
    assert (row.status, row.outcome) == (200, Outcome.UPSTREAM_ERROR)


async def test_nothing_after_the_final_chunk_is_relayed() -> None:
    upstream = ScriptedResponse(200, [*words("a"), FINAL_LINE, *words("trailing")])
    harness = Harness(upstream)
    chunks = await collect(
        (await harness.service.open_stream(ticket(ANONYMOUS), ChatRequest("hi"), "/chat/stream")).lines()
    )
    assert [c["response"] for c in chunks] == ["a", ""]
    assert upstream.closed


async def test_an_error_line_ends_the_stream_with_one_error_chunk() -> None:
    upstream = ScriptedResponse(200, [*words("Hel", "lo"), line(error="out of memory"), *words("never")])
    harness = Harness(upstream)
    chunks = await collect(
        (await harness.service.open_stream(ticket(ANONYMOUS), ChatRequest("hi"), "/chat/stream")).lines()
    )
    assert chunks[:2] == [json.loads(w) for w in words("Hel", "lo")]
    assert chunks[2:] == [{"error": "out of memory", "done": True}]
    assert upstream.closed
    [row] = await harness.rows()
    assert (row.status, row.outcome) == (200, Outcome.UPSTREAM_ERROR)
    # A stream that ended early is charged (and recorded) the chunks it relayed.
    assert (row.prompt_tokens, row.completion_tokens) == (None, 2)


async def test_a_stream_that_ends_before_done_ends_with_an_error_chunk() -> None:
    upstream = ScriptedResponse(200, words("Hel", "lo"))
    harness = Harness(upstream)
    chunks = await collect(
        (await harness.service.open_stream(ticket(ANONYMOUS), ChatRequest("hi"), "/chat/stream")).lines()
    )
    assert len(chunks) == 3
    assert chunks[-1]["done"] is True and "before it was done" in chunks[-1]["error"]
    assert upstream.closed
    [row] = await harness.rows()
    assert row.outcome is Outcome.UPSTREAM_ERROR


@pytest.mark.parametrize(
    "failure",
    [
        UpstreamTimeout("Ollama did not answer within the read timeout"),
        UpstreamError("connection to Ollama lost"),
    ],
)
async def test_a_failure_mid_stream_ends_with_an_error_chunk(failure: GatewayError) -> None:
    upstream = ScriptedResponse(200, [*words("a", "b", "c"), FINAL_LINE], fail_after=2, error=failure)
    harness = Harness(upstream)
    chunks = await collect(
        (await harness.service.open_stream(ticket(ANONYMOUS), ChatRequest("hi"), "/chat/stream")).lines()
    )
    assert chunks == [*(json.loads(w) for w in words("a", "b")), {"error": failure.detail, "done": True}]
    assert upstream.closed
    [row] = await harness.rows()
    assert (row.status, row.outcome) == (200, Outcome.UPSTREAM_ERROR)


async def test_a_stream_closed_by_the_client_midway_is_cancelled() -> None:
    upstream = ScriptedResponse(200, [*words("a", "b", "c"), FINAL_LINE])
    harness = Harness(upstream)
    stream = (await harness.service.open_stream(ticket(ALICE), ChatRequest("hi"), "/chat/stream")).lines()
    assert isinstance(stream, AsyncGenerator)
    first = await anext(stream)
    assert json.loads(first)["response"] == "a"
    assert not is_closed(upstream)
    await stream.aclose()
    assert is_closed(upstream)
    [row] = await harness.rows()
    assert (row.outcome, row.user) == (Outcome.CANCELLED, "alice")
    assert (row.prompt_tokens, row.completion_tokens) == (None, 1)  # the one chunk it relayed


async def test_a_stream_task_cancelled_while_waiting_for_upstream_is_cancelled() -> None:
    upstream = HangingResponse(200, words("a"))
    harness = Harness(upstream)
    stream = (await harness.service.open_stream(ticket(ANONYMOUS), ChatRequest("hi"), "/chat/stream")).lines()
    received: list[bytes] = []

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk)

    task = asyncio.create_task(consume())
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(received) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert upstream.closed
    [row] = await harness.rows()
    assert row.outcome is Outcome.CANCELLED


async def test_a_malformed_final_chunk_ends_with_an_error_chunk() -> None:
    upstream = ScriptedResponse(200, [*words("a"), b'{"model":"x","done":true,"done_reason":"st'])
    harness = Harness(upstream)
    chunks = await collect(
        (await harness.service.open_stream(ticket(ANONYMOUS), ChatRequest("hi"), "/chat/stream")).lines()
    )
    assert chunks[0]["response"] == "a"
    assert chunks[-1]["done"] is True and "error" in chunks[-1]
    assert upstream.closed
    [row] = await harness.rows()
    assert row.outcome is Outcome.UPSTREAM_ERROR


async def test_the_streamed_text_equals_the_json_answer() -> None:
    texts = ["Machine", " learning", " is", "..."]
    stream_harness = Harness(ScriptedResponse(200, [*words(*texts), FINAL_LINE]))
    json_harness = Harness(ScriptedResponse(200, [line(**{**FINAL, "response": "".join(texts)})]))
    chunks = await collect(
        (
            await stream_harness.service.open_stream(ticket(ANONYMOUS), ChatRequest("hi"), "/chat/stream")
        ).lines()
    )
    answer = json.loads(await json_harness.service.complete(ticket(ANONYMOUS), ChatRequest("hi"), "/chat"))
    assert "".join(c["response"] for c in chunks) == answer["response"]["response"]


async def test_a_stream_dropped_before_its_first_line_still_closes_upstream_and_records() -> None:
    """A client gone before the first line: the lines generator never starts, so its `finally` never
    runs; the response's background task (`abandon`) closes the upstream and records the row."""
    upstream = ScriptedResponse(200, [*words("a"), FINAL_LINE])
    harness = Harness(upstream)
    relay = await harness.service.open_stream(ticket(ALICE), ChatRequest("hi"), "/chat/stream")
    never_started = relay.lines()
    await never_started.aclose()
    assert not is_closed(upstream)
    relay.abandon()
    assert is_closed(upstream)
    [row] = await harness.rows()
    assert (row.outcome, row.status, row.user) == (Outcome.CANCELLED, 200, "alice")


async def test_abandon_after_a_completed_stream_changes_nothing() -> None:
    upstream = ScriptedResponse(200, [*words("a"), FINAL_LINE])
    harness = Harness(upstream)
    relay = await harness.service.open_stream(ticket(ALICE), ChatRequest("hi"), "/chat/stream")
    await collect(relay.lines())
    relay.abandon()
    [row] = await harness.rows()
    assert row.outcome is Outcome.OK
