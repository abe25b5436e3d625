"""The pass-through: answers relayed byte for byte, token counts read from the end, one usage row each."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gate.adapters.memory_stores import InMemoryUsageStore
from ollama_gate.domain.errors import InvalidRequest, UpstreamError, UpstreamUnavailable
from ollama_gate.domain.identity import Caller
from ollama_gate.domain.status import ModelInfo
from ollama_gate.domain.usage import Outcome, UsageRecord
from ollama_gate.ports.llm import RequestBody, UpstreamState
from ollama_gate.services.passthrough import (
    OLLAMA,
    OPENAI,
    Dialect,
    PassthroughService,
    Relayed,
    StreamTail,
    managed_model_in,
    merge_listings,
    model_named_in,
)
from ollama_gate.services.usage_recorder import UsageRecorder
from tests.unit.fakes import FakeClock, ticket

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
CALLER = Caller.member("alice", 7, "10.0.0.5")


def ndjson_stream(words: list[str], prompt_tokens: int = 3) -> bytes:
    chunks = [{"model": "m", "message": {"role": "assistant", "content": w}, "done": False} for w in words]
    final = {"model": "m", "done": True, "done_reason": "stop", "prompt_eval_count": prompt_tokens}
    final["eval_count"] = len(words)
    return b"".join(json.dumps(c, separators=(",", ":")).encode() + b"\n" for c in [*chunks, final])


def sse_stream(words: list[str], usage: dict[str, int] | None) -> bytes:
    events: list[dict[str, Any]] = [{"choices": [{"delta": {"content": w}}]} for w in words]
    if usage is not None:
        events.append({"choices": [], "usage": usage})
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def pieces_of(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given offsets: how TCP may hand it over."""
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


class ScriptedProxyResponse:
    def __init__(
        self,
        status: int = 200,
        pieces: list[bytes] | None = None,
        content_type: str = NDJSON,
        fail_with: Exception | None = None,
        hang_after: bool = False,
    ) -> None:
        self.status = status
        self.content_type = content_type
        self._pieces = pieces or []
        self._fail_with = fail_with
        self._hang_after = hang_after
        self.closed = False
        self.sent = 0

    async def read(self) -> bytes:
        return b"".join(self._pieces)

    async def lines(self) -> AsyncIterator[bytes]:
        for line in b"".join(self._pieces).splitlines():
            yield line + b"\n"

    async def chunks(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            await asyncio.sleep(0)
            self.sent += 1
            yield piece
        if self._fail_with is not None:
            raise self._fail_with
        if self._hang_after:
            await asyncio.sleep(3600)  # Ollama still generating

    def close(self) -> None:
        self.closed = True


class FakeRouter:
    health_version = 0
    inventory_version = 0

    def __init__(self, response: ScriptedProxyResponse | Exception | None = None) -> None:
        self.response = response
        self.listings: list[bytes] = []
        self.requests: list[tuple[str, str, RequestBody, str | None]] = []

    async def request(
        self,
        method: str,
        path: str,
        body: RequestBody,
        *,
        model: str | None,
        sticky: bool = False,
        upstream: str | None = None,
    ) -> ScriptedProxyResponse:
        self.requests.append((method, path, body, model))
        if isinstance(self.response, Exception):
            raise self.response
        assert self.response is not None
        return self.response

    async def each(self, path: str, timeout: float) -> list[bytes]:
        return self.listings

    async def post(self, path: str, body: bytes, upstream: str | None = None) -> ScriptedProxyResponse:
        raise NotImplementedError

    async def models(self, timeout: float) -> list[ModelInfo]:
        return []

    def upstream_states(self) -> list[UpstreamState]:
        return []


class Harness:
    def __init__(self, response: ScriptedProxyResponse | Exception | None = None) -> None:
        self.router = FakeRouter(response)
        self.store = InMemoryUsageStore()
        clock = FakeClock()
        self.recorder = UsageRecorder(self.store, clock)
        self.service = PassthroughService(self.router, self.recorder, clock)

    async def rows(self) -> list[UsageRecord]:
        await self.recorder.flush()
        return list(self.store.rows)


async def drain(stream: AsyncIterator[bytes] | None) -> bytes:
    assert stream is not None
    return b"".join([piece async for piece in stream])


async def test_a_native_stream_is_relayed_as_it_arrives_and_its_tokens_recorded() -> None:
    body = ndjson_stream(["Echo:", " hi"], prompt_tokens=5)
    upstream = ScriptedProxyResponse(pieces=[body[:10], body[10:40], body[40:]])
    harness = Harness(upstream)

    relayed = await harness.service.infer(ticket(CALLER), OLLAMA, "/api/chat", b"{}", "m")
    pieces = [piece async for piece in relayed.stream] if relayed.stream else []

    assert pieces == [body[:10], body[10:40], body[40:]]
    assert (relayed.status, relayed.content_type) == (200, NDJSON)
    assert upstream.closed
    [row] = await harness.rows()
    assert (row.endpoint, row.model, row.status, row.outcome) == ("/api/chat", "m", 200, Outcome.OK)
    assert (row.prompt_tokens, row.completion_tokens) == (5, 2)
    assert (row.user, row.key_id, row.client_ip) == ("alice", 7, "10.0.0.5")


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.text(min_size=1, max_size=8), min_size=0, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=20),
)
async def test_however_the_stream_is_cut_the_bytes_and_the_counts_are_the_same(
    words: list[str], cuts: list[int]
) -> None:
    body = ndjson_stream(words, prompt_tokens=4)
    harness = Harness(ScriptedProxyResponse(pieces=pieces_of(body, cuts)))

    relayed = await harness.service.infer(ticket(CALLER), OLLAMA, "/api/generate", b"{}", "m")

    assert await drain(relayed.stream) == body
    [row] = await harness.rows()
    assert (row.outcome, row.prompt_tokens, row.completion_tokens) == (Outcome.OK, 4, len(words))


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=20), with_usage=st.booleans())
async def test_an_openai_stream_keeps_its_usage_however_it_is_cut(cuts: list[int], with_usage: bool) -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12} if with_usage else None
    body = sse_stream(["a", "b", "c"], usage)
    harness = Harness(ScriptedProxyResponse(pieces=pieces_of(body, cuts), content_type=SSE))

    relayed = await harness.service.infer(ticket(CALLER), OPENAI, "/v1/chat/completions", b"{}", "m")

    assert await drain(relayed.stream) == body
    [row] = await harness.rows()
    assert row.outcome is Outcome.OK
    assert (row.prompt_tokens, row.completion_tokens) == ((9, 3) if with_usage else (None, None))


async def test_a_whole_answer_is_relayed_untouched_with_its_tokens() -> None:
    answer = b'{"model":"m","message":{"content":"hi"},"done":true,"prompt_eval_count":2,"eval_count":1}'
    upstream = ScriptedProxyResponse(pieces=[answer], content_type="application/json; charset=utf-8")
    harness = Harness(upstream)

    relayed = await harness.service.infer(ticket(CALLER), OLLAMA, "/api/chat", b"{}", "m")

    assert (relayed.status, relayed.body, relayed.stream) == (200, answer, None)
    assert relayed.content_type == "application/json; charset=utf-8"
    [row] = await harness.rows()
    assert (row.outcome, row.prompt_tokens, row.completion_tokens) == (Outcome.OK, 2, 1)


async def test_openai_tokens_come_from_the_usage_object() -> None:
    answer = b'{"object":"list","data":[],"usage":{"prompt_tokens":6,"total_tokens":6}}'
    harness = Harness(ScriptedProxyResponse(pieces=[answer], content_type="application/json"))

    await harness.service.infer(ticket(CALLER), OPENAI, "/v1/embeddings", b"{}", "m")

    [row] = await harness.rows()
    assert (row.prompt_tokens, row.completion_tokens) == (6, None)


async def test_an_upstream_error_answer_is_relayed_with_its_status_and_recorded() -> None:
    error = b'{"error":"model \'x\' not found"}'
    harness = Harness(ScriptedProxyResponse(status=404, pieces=[error], content_type="application/json"))

    relayed = await harness.service.infer(ticket(CALLER), OLLAMA, "/api/generate", b"{}", "x")

    assert (relayed.status, relayed.body) == (404, error)
    [row] = await harness.rows()
    assert (row.status, row.outcome, row.prompt_tokens) == (404, Outcome.UPSTREAM_ERROR, None)


async def test_an_unreachable_upstream_raises_and_is_recorded() -> None:
    harness = Harness(UpstreamUnavailable("Ollama is offline"))

    with pytest.raises(UpstreamUnavailable):
        await harness.service.infer(ticket(CALLER), OLLAMA, "/api/chat", b"{}", "m")

    [row] = await harness.rows()
    assert (row.status, row.outcome) == (503, Outcome.UPSTREAM_ERROR)


async def test_a_stream_that_breaks_ends_with_an_error_line_on_a_line_of_its_own() -> None:
    body = ndjson_stream(["a", "b", "c"])
    cut = body.index(b"\n") + 5  # mid-way through the second line
    upstream = ScriptedProxyResponse(
        pieces=[body[:cut]], fail_with=UpstreamError("connection to Ollama lost")
    )
    harness = Harness(upstream)

    relayed = await harness.service.infer(ticket(CALLER), OLLAMA, "/api/chat", b"{}", "m")
    sent = await drain(relayed.stream)

    assert sent.startswith(body[:cut])
    assert json.loads(sent.splitlines()[-1]) == {"error": "connection to Ollama lost"}
    assert upstream.closed
    [row] = await harness.rows()
    assert (row.status, row.outcome) == (200, Outcome.UPSTREAM_ERROR)


async def test_an_openai_stream_that_breaks_ends_with_an_error_event() -> None:
    body = sse_stream(["a", "b"], None)
    upstream = ScriptedProxyResponse(
        pieces=[body[:20]], content_type=SSE, fail_with=UpstreamError("connection to Ollama lost")
    )
    harness = Harness(upstream)

    relayed = await harness.service.infer(ticket(CALLER), OPENAI, "/v1/chat/completions", b"{}", "m")
    last_event = (await drain(relayed.stream)).split(b"\n\n")[-2].strip()

    assert json.loads(last_event.removeprefix(b"data: "))["error"]["message"] == "connection to Ollama lost"


async def test_an_error_line_from_ollama_passes_through_and_counts_as_a_failure() -> None:
    body = b'{"message":{"content":"a"},"done":false}\n{"error":"an error was encountered"}\n'
    harness = Harness(ScriptedProxyResponse(pieces=[body]))

    relayed = await harness.service.infer(ticket(CALLER), OLLAMA, "/api/chat", b"{}", "m")

    assert await drain(relayed.stream) == body
    [row] = await harness.rows()
    assert row.outcome is Outcome.UPSTREAM_ERROR


async def test_a_stream_ending_without_its_final_chunk_counts_as_a_failure() -> None:
    harness = Harness(ScriptedProxyResponse(pieces=[b'{"response":"a","done":false}\n']))

    relayed = await harness.service.infer(ticket(CALLER), OLLAMA, "/api/generate", b"{}", "m")
    await drain(relayed.stream)

    [row] = await harness.rows()
    assert row.outcome is Outcome.UPSTREAM_ERROR


async def leave_after(upstream: ScriptedProxyResponse, pieces: int, relayed: Relayed) -> None:
    """Relay until the upstream has sent `pieces`, then cancel, as the server does when the client leaves."""
    task = asyncio.create_task(drain(relayed.stream))
    while upstream.sent < pieces:
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_client_that_leaves_mid_stream_closes_the_upstream_and_is_recorded_cancelled() -> None:
    upstream = ScriptedProxyResponse(pieces=[b'{"done":false}\n'] * 2, hang_after=True)
    harness = Harness(upstream)
    relayed = await harness.service.infer(ticket(CALLER), OLLAMA, "/api/chat", b"{}", "m")

    await leave_after(upstream, 2, relayed)

    assert upstream.closed
    [row] = await harness.rows()
    assert (row.status, row.outcome) == (200, Outcome.CANCELLED)


@pytest.mark.parametrize(
    ("dialect", "content_type", "body"),
    [
        (OPENAI, SSE, sse_stream(["a"], {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12})),
        (OLLAMA, NDJSON, b'{"done":false}\n{"done":true,"prompt_eval_count":9,"eval_count":3}\n'),
    ],
)
async def test_a_client_that_leaves_after_the_last_event_is_recorded_complete_with_its_tokens(
    dialect: Dialect, content_type: str, body: bytes
) -> None:
    """The SDKs hang up on `[DONE]` (or the done chunk), often before the upstream's own end arrives."""
    upstream = ScriptedProxyResponse(pieces=[body], content_type=content_type, hang_after=True)
    harness = Harness(upstream)
    relayed = await harness.service.infer(ticket(CALLER), dialect, "/v1/chat/completions", b"{}", "m")

    await leave_after(upstream, 1, relayed)

    assert upstream.closed
    [row] = await harness.rows()
    assert (row.outcome, row.prompt_tokens, row.completion_tokens) == (Outcome.OK, 9, 3)


async def test_a_stream_dropped_before_its_first_byte_still_closes_the_upstream() -> None:
    """The answer calls `abandon` however it ended, also when the stream never started."""
    upstream = ScriptedProxyResponse(pieces=[b'{"done":false}\n'])
    harness = Harness(upstream)

    relayed = await harness.service.infer(ticket(CALLER), OLLAMA, "/api/chat", b"{}", "m")
    relayed.abandon()

    assert upstream.closed
    [row] = await harness.rows()
    assert row.outcome is Outcome.CANCELLED


async def test_abandoning_a_finished_stream_changes_nothing() -> None:
    upstream = ScriptedProxyResponse(pieces=[b'{"done":true,"prompt_eval_count":2,"eval_count":3}\n'])
    harness = Harness(upstream)

    relayed = await harness.service.infer(ticket(CALLER), OLLAMA, "/api/chat", b"{}", "m")
    assert relayed.stream is not None
    _ = [piece async for piece in relayed.stream]
    relayed.abandon()

    [row] = await harness.rows()
    assert row.outcome is Outcome.OK


async def test_forwarding_a_listing_writes_no_usage_row() -> None:
    harness = Harness(
        ScriptedProxyResponse(pieces=[b'{"version":"0.12.0"}'], content_type="application/json")
    )

    relayed = await harness.service.forward("GET", "/api/version", None, None)

    assert relayed.body == b'{"version":"0.12.0"}'
    assert await harness.rows() == []


async def test_pull_progress_is_streamed_without_a_usage_row() -> None:
    progress = [b'{"status":"pulling manifest"}\n', b'{"status":"success"}\n']
    harness = Harness(ScriptedProxyResponse(pieces=progress))

    relayed = await harness.service.forward("POST", "/api/pull", b'{"model":"m"}', "m", sticky=True)

    assert await drain(relayed.stream) == b"".join(progress)
    assert await harness.rows() == []


def test_listings_from_several_servers_are_merged_without_duplicates() -> None:
    first = b'{"models":[{"name":"a:latest","size":1},{"name":"b:latest","size":2}]}'
    second = b'{"models":[{"name":"b:latest","size":3},{"name":"c:latest","size":4}]}'

    merged = json.loads(merge_listings([first, second], "models", "name"))

    assert merged == {
        "models": [
            {"name": "a:latest", "size": 1},
            {"name": "b:latest", "size": 2},
            {"name": "c:latest", "size": 4},
        ]
    }


def test_one_listing_is_passed_on_as_it_is() -> None:
    only = b'{"object": "list", "data": [{"id": "a"}]}'

    assert merge_listings([only], "data", "id") is only


async def test_union_asks_the_router_for_every_listing() -> None:
    harness = Harness()
    harness.router.listings = [
        b'{"object":"list","data":[{"id":"a"}]}',
        b'{"object":"list","data":[{"id":"b"}]}',
    ]

    merged = json.loads(await harness.service.union("/v1/models", "data", "id"))

    assert merged == {"object": "list", "data": [{"id": "a"}, {"id": "b"}]}


@pytest.mark.parametrize("body", [b"", b"   ", b"{bad", b"[1, 2]", b'{"model": 3}', b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_the_clients_error(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        model_named_in(body)


def test_the_model_is_read_from_the_request_and_everything_else_ignored() -> None:
    assert model_named_in(b'{"model": "m", "messages": [], "stream": false}') == "m"
    assert model_named_in(b'{"messages": []}') is None
    assert managed_model_in(b'{"name": "old-style"}') == "old-style"
    assert managed_model_in(b'{"source": "a", "destination": "b"}') == "a"


@settings(max_examples=100)
@given(st.lists(st.binary(max_size=40), max_size=20))
def test_stream_tail_keeps_the_last_two_lines_of_any_stream(pieces: list[bytes]) -> None:
    tail = StreamTail()
    for piece in pieces:
        tail.feed(piece)
    tail.finish()

    lines = [line.strip() for line in b"".join(pieces).split(b"\n") if line.strip()]
    assert [tail.previous, tail.last] == [b"", b"", *lines][-2:]
