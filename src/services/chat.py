"""Chat through Ollama's /api/generate, JSON or streamed, with one usage row per admitted request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import msgspec

from ollama_gate.domain.ceilings import BodyKind, lower_to_ceilings
from ollama_gate.domain.chat import ChatRequest, upstream_failure
from ollama_gate.domain.errors import GatewayError, QueueRefused, UpstreamError
from ollama_gate.domain.usage import (
    NO_TOKENS,
    TOKEN_COUNT_FIELDS,
    Outcome,
    TokenCounts,
    tokens_from_final_chunk,
)
from ollama_gate.ports.clock import Clock
from ollama_gate.ports.llm import LLMBackend, UpstreamResponse
from ollama_gate.services.gatekeeper import Ticket
from ollama_gate.services.gpu_queue import GpuQueue
from ollama_gate.services.stream_end import StreamEnd
from ollama_gate.services.usage_recorder import UsageRecorder

# Nothing was sent: the client went away before its answer was ready (nginx's convention).
STATUS_CLIENT_CLOSED = 499

_encode = msgspec.json.encode
_decode = msgspec.json.decode
# Ollama's last answer of a generation, each field kept as the JSON it came as: relayed as it is, and its
# `context` (the token ids of the whole exchange, thousands of them for a long one) is never turned into
# Python ints only to be dropped.
_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


class _NotAnObject(ValueError):
    """Ollama's answer is JSON, but not an object."""


def _final_fields(data: bytes) -> tuple[dict[str, msgspec.Raw], TokenCounts]:
    """Ollama's final answer (or chunk) without its `context`, its fields as raw JSON, and its token counts.
    Raises msgspec.DecodeError or UnicodeDecodeError for what is not JSON, _NotAnObject for other JSON."""
    try:
        fields = _decode_fields(data)
    except msgspec.ValidationError as error:
        raise _NotAnObject() from error
    # Raw fields are skipped, not read: their strings' UTF-8 is checked here, once.
    if not data.isascii():
        data.decode()
    fields.pop("context", None)
    counts = {name: _decode(fields[name]) for name in TOKEN_COUNT_FIELDS if name in fields}
    return fields, tokens_from_final_chunk(counts)


def error_text(body: bytes) -> str:
    """The text of Ollama's `{"error": "..."}` body, or the start of whatever it sent instead."""
    try:
        decoded = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return body[:200].decode(errors="replace").strip()
    message = decoded.get("error") if isinstance(decoded, dict) else None
    if isinstance(message, str):
        return message
    return body[:200].decode(errors="replace").strip()


def error_line(message: str) -> bytes:
    """The last line of a stream that failed after it began."""
    return _encode({"error": message, "done": True}) + b"\n"


# Every streamed line is searched: with `find`, as `bytes in bytes` first tries its operand as an integer
# and builds (and drops) a TypeError's message each time (callgrind: 700 instructions in
# PyUnicode_FromFormatV alone, three times a line).
def _is_final_chunk(line: bytes) -> bool:
    # Quotes inside JSON strings are escaped, so these bytes can only be the `done` key itself.
    return line.find(b'"done":true') >= 0 or line.find(b'"done": true') >= 0


def _error_message(line: bytes) -> str | None:
    if line.find(b'"error"') < 0:
        return None
    try:
        chunk = _decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if isinstance(chunk, dict) and "error" in chunk:
        return str(chunk["error"])
    return None


async def _failure(upstream: UpstreamResponse, model: str) -> GatewayError:
    """The error for an answer of Ollama's that is not a 200."""
    return upstream_failure(upstream.status, error_text(await upstream.read()), model)


class _Generate:
    """`send(upstream)` of a generation: the body posted to /api/generate on the server the queue chose.

    An object of two slots rather than a closure (a function, its cells and their tuple: 312 bytes in the
    tracemalloc snapshot): a request waiting for a GPU slot holds it for as long as it waits.
    """

    __slots__ = ("_body", "_llm")

    def __init__(self, llm: LLMBackend, body: bytes) -> None:
        self._llm = llm
        self._body = body

    def __call__(self, upstream: str | None) -> Awaitable[UpstreamResponse]:
        return self._llm.post("/api/generate", self._body, upstream)


class StreamRelay:
    """One relayed stream: its lines, ended exactly once by its `StreamEnd` (see there)."""

    def __init__(self, upstream: UpstreamResponse, on_finish: Callable[[Outcome, TokenCounts], None]) -> None:
        self._upstream = upstream
        self.end = StreamEnd(upstream, on_finish)

    def abandon(self) -> None:
        self.end.abandon()

    async def lines(self) -> AsyncGenerator[bytes, None]:
        outcome, tokens, relayed = Outcome.UPSTREAM_ERROR, NO_TOKENS, 0
        try:
            async for line in self._upstream.lines():
                if _is_final_chunk(line):
                    try:
                        chunk, tokens = _final_fields(line)
                    except (msgspec.DecodeError, UnicodeDecodeError, _NotAnObject):
                        yield error_line("Ollama sent an unreadable chunk")
                        break
                    outcome = Outcome.OK
                    yield _encode(chunk) + b"\n"
                    break
                message = _error_message(line)
                if message is not None:
                    yield error_line(message)
                    break
                relayed += 1
                yield line
            else:
                yield error_line("Ollama ended the stream before it was done")
        except GatewayError as error:
            yield error_line(error.detail)
        except (asyncio.CancelledError, GeneratorExit):
            # Cancelled while its final chunk was being sent: the client has its whole answer.
            if outcome is not Outcome.OK:
                outcome = Outcome.CANCELLED
            raise
        finally:
            # A stream that ended early is charged the chunks it relayed (a chunk is a token).
            self.end(outcome, tokens if outcome is Outcome.OK else TokenCounts(None, relayed or None))


class ChatService:
    """Forwards chat requests and records their usage when they end."""

    def __init__(
        self,
        llm: LLMBackend,
        recorder: UsageRecorder,
        clock: Clock,
        default_model: str,
        gpu: GpuQueue | None = None,
    ) -> None:
        self._llm = llm
        self._recorder = recorder
        self._clock = clock
        self.default_model = default_model
        self._gpu = gpu

    def model_of(self, request: ChatRequest) -> str:
        return request.model or self.default_model

    def _payload(self, ticket: Ticket, request: ChatRequest, stream: bool) -> dict[str, Any]:
        payload = request.generate_payload(self.default_model, stream=stream)
        lower_to_ceilings(payload, BodyKind.OLLAMA_GENERATION, ticket.plan)
        return payload

    async def complete(self, ticket: Ticket, request: ChatRequest, endpoint: str) -> bytes:
        """The whole answer as the gateway's JSON body: `{"user", "tier", "plan", "response"}`."""
        started = self._clock.monotonic()
        caller, model = ticket.caller, self.model_of(request)
        status: int | None = STATUS_CLIENT_CLOSED
        outcome, tokens = Outcome.CANCELLED, NO_TOKENS
        try:
            upstream = await self._send(ticket, self._payload(ticket, request, stream=False), model)
            if upstream.status != 200:
                raise await _failure(upstream, model)
            body = await upstream.read()
            try:
                answer, tokens = _final_fields(body)
            except _NotAnObject as error:
                raise UpstreamError("Ollama sent an unexpected answer") from error
            except (msgspec.DecodeError, UnicodeDecodeError) as error:
                raise UpstreamError("Ollama sent an unreadable answer") from error
            status, outcome = 200, Outcome.OK
            return _encode(
                {"user": caller.user, "tier": caller.tier.value, "plan": ticket.plan.name, "response": answer}
            )
        except QueueRefused:
            status = None  # turned away before it reached Ollama: a refusal, no usage row
            raise
        except GatewayError as error:
            status, outcome = error.status, Outcome.UPSTREAM_ERROR
            raise
        finally:
            if status is not None:
                self._recorder.request_ended(ticket, endpoint, model, status, outcome, started, tokens)

    async def open_stream(self, ticket: Ticket, request: ChatRequest, endpoint: str) -> StreamRelay:
        """Open the upstream stream and check its status before anything is sent to the client.

        Errors before the first chunk raise (and become ordinary JSON answers); the relay's lines are
        NDJSON and a failed stream ends with one `{"error": ..., "done": true}` line.
        """
        started = self._clock.monotonic()
        model = self.model_of(request)
        try:
            upstream = await self._send(ticket, self._payload(ticket, request, stream=True), model)
            if upstream.status != 200:
                raise await _failure(upstream, model)
        except QueueRefused:
            raise
        except GatewayError as error:
            self._recorder.request_ended(
                ticket, endpoint, model, error.status, Outcome.UPSTREAM_ERROR, started, NO_TOKENS
            )
            raise
        except asyncio.CancelledError:
            self._recorder.request_ended(
                ticket, endpoint, model, STATUS_CLIENT_CLOSED, Outcome.CANCELLED, started, NO_TOKENS
            )
            raise

        def finish(outcome: Outcome, tokens: TokenCounts) -> None:
            self._recorder.request_ended(ticket, endpoint, model, 200, outcome, started, tokens)

        return StreamRelay(upstream, finish)

    def _send(self, ticket: Ticket, payload: dict[str, Any], model: str) -> Awaitable[UpstreamResponse]:
        """Ollama's answer, once a GPU slot is held (when the gateway's queue is on).

        Not a coroutine itself: it hands back the queue's, so a request waiting for a slot keeps no frame
        of it (thousands wait at once; each frame of a waiting chain costs a few hundred bytes).
        """
        send = _Generate(self._llm, _encode(payload))
        return self._gpu.send(ticket, model, send) if self._gpu is not None else send(None)
