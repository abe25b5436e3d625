"""Ollama's own API and its OpenAI-compatible API, forwarded as they are, with usage rows for inference.

Bodies go up untouched and answers come back untouched: a streamed answer is relayed in the pieces it
arrives in, never re-split or re-encoded. Only the last lines are kept aside, to read the token counts
(Ollama's final NDJSON chunk, or the OpenAI `usage` object in the last event) when the stream ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import msgspec

from ollama_gate.domain.ceilings import BodyKind, lower_to_ceilings, needs_lowering
from ollama_gate.domain.errors import GatewayError, InvalidRequest, QueueRefused, UpstreamUnavailable
from ollama_gate.domain.immutable import immutable
from ollama_gate.domain.json_depth import check_nesting
from ollama_gate.domain.plans import Plan
from ollama_gate.domain.usage import NO_TOKENS, Outcome, TokenCounts, tokens_from_final_chunk
from ollama_gate.ports.clock import Clock
from ollama_gate.ports.llm import LLMRouter, ProxyResponse, RequestBody
from ollama_gate.services.gatekeeper import Ticket
from ollama_gate.services.gpu_queue import GpuQueue
from ollama_gate.services.stream_end import StreamEnd
from ollama_gate.services.usage_recorder import UsageRecorder

# Nothing was sent: the client went away before its answer was ready (nginx's convention).
STATUS_CLIENT_CLOSED = 499
STREAMED_TYPES = ("application/x-ndjson", "text/event-stream")

_encode = msgspec.json.encode
_decode = msgspec.json.decode


class _Envelope(msgspec.Struct):
    """The only fields the gateway reads from a request body; the rest is Ollama's business."""

    model: str | None = None
    name: str | None = None  # the older spelling of `model` in model management
    source: str | None = None  # /api/copy


def _envelope(body: bytes) -> _Envelope:
    if not body.strip():
        raise InvalidRequest("missing request body")
    check_nesting(body)
    try:
        return _decode(body, type=_Envelope)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"invalid request body: {error}") from error


def model_named_in(body: bytes) -> str | None:
    """The model a JSON request body names; raises InvalidRequest when the body is not a JSON object."""
    return _envelope(body).model


def managed_model_in(body: bytes) -> str | None:
    """The model a management request acts on (`model`, `name`, or the `source` of a copy)."""
    envelope = _envelope(body)
    return envelope.model or envelope.name or envelope.source


def _document(text: bytes) -> dict[str, Any] | None:
    try:
        value = _decode(text)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


class StreamTail:
    """The last two non-empty lines of a stream fed piece by piece, at a cost bounded per piece."""

    __slots__ = ("_pending", "last", "previous")

    def __init__(self) -> None:
        self._pending = bytearray()
        self.last = b""
        self.previous = b""

    @property
    def ends_mid_line(self) -> bool:
        return bool(self._pending)

    def feed(self, data: bytes) -> None:
        head, newline, rest = data.rpartition(b"\n")
        if not newline:
            self._pending += data
            return
        block = bytes(self._pending) + head if self._pending else head
        self._pending = bytearray(rest)
        # A line-by-line stream has a few lines per piece; only the end of the piece matters.
        for line in block.rstrip(b"\r\n").rsplit(b"\n", 4):
            self._push(line)

    def finish(self) -> None:
        """The stream is over: a last line without its newline counts too."""
        if self._pending:
            self._push(bytes(self._pending))
            self._pending = bytearray()

    def _push(self, line: bytes) -> None:
        line = line.strip()
        if line:
            self.previous, self.last = self.last, line


class Dialect(Protocol):
    """What differs between Ollama's API and the OpenAI one: where the token counts are, how a stream
    that broke is ended."""

    def tokens(self, answer: dict[str, Any]) -> TokenCounts: ...

    def outcome(self, tail: StreamTail) -> tuple[Outcome, TokenCounts]: ...

    def error_event(self, message: str, mid_line: bool) -> bytes:
        """The last words of a stream that broke; `mid_line` when it broke inside a line."""
        ...

    def chunks_in(self, data: bytes) -> int:
        """How many of the stream's chunks (a token each) end in `data`."""
        ...


class OllamaDialect:
    """NDJSON: the final chunk has `done: true` and the counts; an `{"error"}` line ends a failed stream."""

    def tokens(self, answer: dict[str, Any]) -> TokenCounts:
        return tokens_from_final_chunk(answer)

    def outcome(self, tail: StreamTail) -> tuple[Outcome, TokenCounts]:
        final = _document(tail.last) if b'"done"' in tail.last else None
        if final is not None and final.get("done") is True and "error" not in final:
            return Outcome.OK, self.tokens(final)
        return Outcome.UPSTREAM_ERROR, NO_TOKENS

    def error_event(self, message: str, mid_line: bool) -> bytes:
        return (b"\n" if mid_line else b"") + _encode({"error": message}) + b"\n"

    def chunks_in(self, data: bytes) -> int:
        return data.count(b"\n")


class OpenAIDialect:
    """Server-sent events: `data: [DONE]` ends a complete stream; `usage` rides in the event before it."""

    def tokens(self, answer: dict[str, Any]) -> TokenCounts:
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            return NO_TOKENS
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return TokenCounts(
            prompt if isinstance(prompt, int) else None,
            completion if isinstance(completion, int) else None,
        )

    def outcome(self, tail: StreamTail) -> tuple[Outcome, TokenCounts]:
        if tail.last != b"data: [DONE]":
            return Outcome.UPSTREAM_ERROR, NO_TOKENS
        before = tail.previous
        event = _document(before[5:]) if before.startswith(b"data:") and b'"usage"' in before else None
        return Outcome.OK, self.tokens(event) if event is not None else NO_TOKENS

    def error_event(self, message: str, mid_line: bool) -> bytes:
        error = {"message": message, "type": "server_error", "param": None, "code": None}
        # A blank line first ends whatever event was under way, so the error is an event of its own.
        return (b"\n\n" if mid_line else b"\n") + b"data: " + _encode({"error": error}) + b"\n\n"

    def chunks_in(self, data: bytes) -> int:
        return data.count(b"data:")


OLLAMA = OllamaDialect()
OPENAI = OpenAIDialect()

# Where each inference path's ceilings live (see domain/ceilings.py).
BODY_KINDS = {
    "/api/generate": BodyKind.OLLAMA_GENERATION,
    "/api/chat": BodyKind.OLLAMA_GENERATION,
    "/api/embed": BodyKind.OLLAMA_EMBEDDING,
    "/api/embeddings": BodyKind.OLLAMA_EMBEDDING,
    "/v1/chat/completions": BodyKind.OPENAI_GENERATION,
    "/v1/completions": BodyKind.OPENAI_GENERATION,
    "/v1/embeddings": BodyKind.OPENAI_EMBEDDING,
}


def ceilinged(body: bytes, kind: BodyKind, plan: Plan) -> bytes:
    """`body` with `plan`'s ceilings applied; the very same bytes when nothing had to change (and when
    it is no JSON object: Ollama answers that with its own error)."""
    if not needs_lowering(kind, plan):
        return body
    document = _document(body)
    if document is None or not lower_to_ceilings(document, kind, plan):
        return body
    return _encode(document)


@immutable
class Relayed:
    """An upstream answer for the client: a whole body, or a stream (then `body` is empty).

    The answer that sends a stream calls `abandon` when it is done, however it ended.
    """

    status: int
    content_type: str
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    abandon: Callable[[], None] = lambda: None


def _unmetered(_outcome: Outcome, _tokens: TokenCounts) -> None:
    """Listings and model management write no usage row."""


def is_streamed(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in STREAMED_TYPES


def listing_for(plan: Plan, body: bytes, list_field: str, id_field: str) -> bytes:
    """A listing with only the models `plan` allows; the very same bytes for a plan without a model list."""
    if plan.models is None:
        return body
    document = _document(body)
    listed = document.get(list_field) if document is not None else None
    if document is None or not isinstance(listed, list):
        return body
    document[list_field] = [
        item
        for item in listed
        if isinstance(item, dict)
        and isinstance(item.get(id_field), str)
        and plan.allows_model(item[id_field])
    ]
    return _encode(document)


def merge_listings(bodies: list[bytes], list_field: str, id_field: str) -> bytes:
    """One listing from every server's: items merged by `id_field`, first seen wins; one body as it is."""
    if len(bodies) == 1:
        return bodies[0]
    documents = [d for d in (_document(body) for body in bodies) if d is not None]
    if not documents:
        return bodies[0]
    merged, seen, items = dict(documents[0]), set(), []
    for document in documents:
        listed = document.get(list_field)
        for item in listed if isinstance(listed, list) else ():
            identity = item.get(id_field) if isinstance(item, dict) else None
            if identity not in seen:
                seen.add(identity)
                items.append(item)
    merged[list_field] = items
    return _encode(merged)


class _Forward:
    """`send(pinned)` of an inference request: its body posted through the router (to the server the
    queue chose). An object of four slots rather than a closure (a function, its cells and their tuple):
    a request waiting for a GPU slot holds it for as long as it waits."""

    __slots__ = ("_body", "_model", "_path", "_router")

    def __init__(self, router: LLMRouter, path: str, body: bytes, model: str | None) -> None:
        self._router = router
        self._path = path
        self._body = body
        self._model = model

    def __call__(self, pinned: str | None) -> Awaitable[ProxyResponse]:
        return self._router.request("POST", self._path, self._body, model=self._model, upstream=pinned)


class PassthroughService:
    """Forwards native and OpenAI requests through the router; one usage row per inference request."""

    def __init__(
        self,
        router: LLMRouter,
        recorder: UsageRecorder,
        clock: Clock,
        listing_timeout: float = 10.0,
        gpu: GpuQueue | None = None,
    ) -> None:
        self._router = router
        self._recorder = recorder
        self._clock = clock
        self._listing_timeout = listing_timeout
        self._gpu = gpu

    async def infer(
        self, ticket: Ticket, dialect: Dialect, path: str, body: bytes, model: str | None
    ) -> Relayed:
        """Forward an admitted inference request, its plan's ceilings applied; its usage row is written
        (and its ticket ended) when the answer ends."""
        started = self._clock.monotonic()

        def record(status: int, outcome: Outcome, tokens: TokenCounts) -> None:
            self._recorder.request_ended(ticket, path, model, status, outcome, started, tokens)

        body = ceilinged(body, BODY_KINDS.get(path, BodyKind.OPENAI_EMBEDDING), ticket.plan)
        send = _Forward(self._router, path, body, model)
        try:
            upstream = await (self._gpu.send(ticket, model, send) if self._gpu is not None else send(None))
        except QueueRefused:
            raise  # turned away before it reached Ollama: a refusal, no usage row
        except GatewayError as error:
            record(error.status, Outcome.UPSTREAM_ERROR, NO_TOKENS)
            raise
        except asyncio.CancelledError:
            record(STATUS_CLIENT_CLOSED, Outcome.CANCELLED, NO_TOKENS)
            raise
        if upstream.status == 200 and is_streamed(upstream.content_type):
            return self._relayed_stream(
                upstream, dialect, StreamEnd(upstream, lambda outcome, tokens: record(200, outcome, tokens))
            )
        return await self._whole(upstream, dialect, record)

    async def _whole(
        self, upstream: ProxyResponse, dialect: Dialect, record: Callable[[int, Outcome, TokenCounts], None]
    ) -> Relayed:
        status, outcome, tokens = STATUS_CLIENT_CLOSED, Outcome.CANCELLED, NO_TOKENS
        try:
            body = await upstream.read()
            status = upstream.status
            outcome = Outcome.OK if status == 200 else Outcome.UPSTREAM_ERROR
            answer = _document(body) if status == 200 else None
            if answer is not None:
                tokens = dialect.tokens(answer)
            return Relayed(status, upstream.content_type, body)
        except GatewayError as error:
            status, outcome = error.status, Outcome.UPSTREAM_ERROR
            raise
        finally:
            upstream.close()
            record(status, outcome, tokens)

    def _relayed_stream(self, upstream: ProxyResponse, dialect: Dialect, end: StreamEnd) -> Relayed:
        stream = self._pieces(upstream, dialect, end)
        return Relayed(200, upstream.content_type, stream=stream, abandon=end.abandon)

    async def _pieces(
        self, upstream: ProxyResponse, dialect: Dialect, end: StreamEnd
    ) -> AsyncIterator[bytes]:
        tail = StreamTail()
        outcome, tokens, relayed = Outcome.UPSTREAM_ERROR, NO_TOKENS, 0
        try:
            async for data in upstream.chunks():
                tail.feed(data)
                relayed += dialect.chunks_in(data)
                yield data
            tail.finish()
            outcome, tokens = dialect.outcome(tail)
        except GatewayError as error:
            # The status line is long gone: the failure can only be the stream's last line.
            yield dialect.error_event(error.detail, tail.ends_mid_line)
        except (asyncio.CancelledError, GeneratorExit):
            # A client may hang up as soon as it has the last event, before the upstream's own end
            # arrives: what it was sent was complete, and its tokens count.
            tail.finish()
            outcome, tokens = dialect.outcome(tail)
            if outcome is not Outcome.OK:
                outcome = Outcome.CANCELLED
            raise
        finally:
            # A stream that ended early is charged the chunks it relayed (a chunk is a token).
            end(outcome, tokens if outcome is Outcome.OK else TokenCounts(None, relayed or None))

    async def forward(
        self,
        method: str,
        path: str,
        body: RequestBody,
        model: str | None,
        *,
        sticky: bool = False,
        upstream_name: str | None = None,
    ) -> Relayed:
        """Forward a request that is not metered (listings, model management): no usage row. With
        `upstream_name`, to that server only (the console's models page acts on one server)."""
        upstream = await self._router.request(
            method, path, body, model=model, sticky=sticky, upstream=upstream_name
        )
        if upstream.status == 200 and is_streamed(upstream.content_type):
            return self._relayed_stream(upstream, OLLAMA, StreamEnd(upstream, _unmetered))
        try:
            return Relayed(upstream.status, upstream.content_type, await upstream.read())
        finally:
            upstream.close()

    async def union(self, path: str, list_field: str, id_field: str) -> bytes:
        """`GET path` on every server, the listings merged (`/api/tags`, `/api/ps`, `/v1/models`)."""
        bodies = await self._router.each(path, self._listing_timeout)
        if not bodies:
            raise UpstreamUnavailable("no Ollama server answered")
        return merge_listings(bodies, list_field, id_field)
