"""A fast fake Ollama for load: a raw asyncio Protocol on uvloop, HTTP/1.1 keep-alive, run as its own process.

`python -m bench.fake_upstream --port 11500 --chunks 20 --delay-ms 20`

- `POST /api/generate` with `"stream": false`: one JSON answer with the final-chunk fields and token counts.
- `POST /api/generate` otherwise (Ollama streams by default): `--chunks` NDJSON lines in chunked encoding,
  `--delay-ms` apart, the last one the `done: true` chunk with `done_reason` and the token counts.
- `POST /api/chat`: the same as `/api/generate` (the same bytes: the bench counts answers, not words).
- `POST /v1/chat/completions`: one OpenAI chat completion with its `usage` (never streamed).
- `GET /api/tags`, `GET /api/version`, `GET /`: what Ollama answers.

With `--slots N` it behaves like Ollama under load (`OLLAMA_NUM_PARALLEL=N`): at most N generations at
once, the rest wait first in, first out; a JSON answer takes `--service-ms`, a stream holds its slot until
its last line. `--held` keeps every started generation waiting until `POST /bench/release` (slots full,
for the bench's waiting-queue scenario; `POST /bench/hold` closes the gate again). `GET /bench/stats` answers what it did: the slots, the busy time
summed over slots, counts, the longest queue, and per generation `[tag, arrival, start, end]` in seconds
of its own monotonic clock (the tag is the request's `prompt`, which the bench sets to the user's name);
`POST /bench/reset` clears them. A client that disconnects frees its slot at once (Ollama stops).

Every answer is encoded once at start-up: per request the server only finds the end of the head, reads
`Content-Length` and the `stream` flag, and writes prepared bytes. It must never be the bottleneck, so the
bench prints its direct throughput next to the gateway's.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import cast

import msgspec
import uvloop

MODEL = "smollm:latest"
CREATED_AT = "2026-11-25T12:00:00Z"
ANSWER = "A gateway is a door with a guard."


@dataclass(frozen=True, slots=True)
class Answers:
    """Every byte the server sends, prepared once."""

    json_answer: bytes
    stream_head: bytes
    stream_chunk: bytes
    stream_final: bytes
    tags: bytes
    version: bytes
    root: bytes
    not_found: bytes
    bad_request: bytes
    openai_answer: bytes
    empty_ok: bytes
    chunks: int
    delay: float


def _final_fields(eval_count: int) -> dict[str, object]:
    return {
        "done": True,
        "done_reason": "stop",
        "context": list(range(32)),
        "total_duration": 12_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": 5,
        "prompt_eval_duration": 2_000_000,
        "eval_count": eval_count,
        "eval_duration": 9_000_000,
    }


def _openai_body(completion_tokens: int) -> bytes:
    return msgspec.json.encode(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_764_590_400,
            "model": MODEL,
            "system_fingerprint": "fp_ollama",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": completion_tokens,
                "total_tokens": 5 + completion_tokens,
            },
        }
    )


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def prepare_answers(chunks: int, delay: float) -> Answers:
    encode = msgspec.json.encode
    json_body = encode(
        {"model": MODEL, "created_at": CREATED_AT, "response": ANSWER, **_final_fields(chunks)}
    )
    chunk = encode({"model": MODEL, "created_at": CREATED_AT, "response": " word", "done": False}) + b"\n"
    final = (
        encode({"model": MODEL, "created_at": CREATED_AT, "response": "", **_final_fields(chunks)}) + b"\n"
    )
    tags = encode(
        {
            "models": [
                {
                    "name": MODEL,
                    "model": MODEL,
                    "modified_at": CREATED_AT,
                    "size": 990_000_000,
                    "digest": "sha256:" + "0" * 64,
                    "details": {"format": "gguf", "family": "llama"},
                }
            ]
        }
    )
    return Answers(
        json_answer=_response("200 OK", "application/json; charset=utf-8", json_body),
        stream_head=b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n",
        stream_chunk=_chunked(chunk),
        stream_final=_chunked(final) + b"0\r\n\r\n",
        tags=_response("200 OK", "application/json; charset=utf-8", tags),
        version=_response("200 OK", "application/json; charset=utf-8", b'{"version":"0.12.0"}'),
        root=_response("200 OK", "text/plain; charset=utf-8", b"Ollama is running"),
        not_found=_response("404 Not Found", "text/plain; charset=utf-8", b"404 page not found"),
        bad_request=_response(
            "400 Bad Request", "application/json; charset=utf-8", b'{"error":"bad request"}'
        ),
        openai_answer=_response("200 OK", "application/json", _openai_body(chunks)),
        empty_ok=_response("200 OK", "application/json", b"{}"),
        chunks=max(chunks, 1),
        delay=delay,
    )


class _GenerateFlags(msgspec.Struct):
    stream: bool = True
    prompt: str = ""


_flags_decoder = msgspec.json.Decoder(_GenerateFlags)


def _content_length(head: bytes) -> int:
    lowered = head.lower()
    start = lowered.find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    start += len(b"\r\ncontent-length:")
    end = lowered.find(b"\r\n", start)
    return int(lowered[start : end if end >= 0 else len(lowered)])


@dataclass(slots=True)
class Generation:
    """One request for a slot: who asked (its prompt), when it arrived, started and ended."""

    protocol: OllamaProtocol
    stream: bool
    tag: str
    arrival: float
    start: float = 0.0
    end: float = 0.0
    timer: asyncio.TimerHandle | None = None
    state: str = "waiting"  # waiting | held | running | done


@dataclass
class Slots:
    """Ollama's scheduler for one model, as the bench needs it: N at once, the rest first in, first out."""

    capacity: int
    service: float
    held: bool
    running: int = 0
    waiting: deque[Generation] = field(default_factory=deque)
    held_back: list[Generation] = field(default_factory=list)
    log: list[Generation] = field(default_factory=list)
    started: int = 0
    completed: int = 0
    cancelled: int = 0
    max_waiting: int = 0

    def submit(self, generation: Generation) -> None:
        self.waiting.append(generation)
        self.max_waiting = max(self.max_waiting, len(self.waiting))
        self._dispatch()

    def _dispatch(self) -> None:
        while self.running < self.capacity and self.waiting:
            generation = self.waiting.popleft()
            if generation.state != "waiting":
                continue
            self.running += 1
            self.started += 1
            generation.start = time.monotonic()
            if len(self.log) < 200_000:
                self.log.append(generation)
            if self.held:
                generation.state = "held"
                self.held_back.append(generation)
            else:
                self._run(generation)

    def _run(self, generation: Generation) -> None:
        generation.state = "running"
        if generation.stream:
            generation.protocol.start_stream(generation)
        else:
            loop = asyncio.get_running_loop()
            generation.timer = loop.call_later(
                self.service, generation.protocol.finish_generation, generation
            )

    def release(self) -> None:
        """Opens the gate: every held generation runs, and later ones run at once."""
        self.held = False
        held, self.held_back = self.held_back, []
        for generation in held:
            if generation.state == "held":
                self._run(generation)

    def end(self, generation: Generation, cancelled: bool = False) -> None:
        """A generation finished (or its client left): its slot goes to the next in line."""
        if generation.state == "done":
            return
        was_waiting = generation.state == "waiting"
        generation.state = "done"
        if generation.timer is not None:
            generation.timer.cancel()
            generation.timer = None
        if cancelled:
            self.cancelled += 1
        if was_waiting:
            return
        generation.end = time.monotonic()
        self.running -= 1
        if not cancelled:
            self.completed += 1
        self._dispatch()

    def stats(self) -> bytes:
        now = time.monotonic()
        busy = sum((g.end or now) - g.start for g in self.log)
        return msgspec.json.encode(
            {
                "slots": self.capacity,
                "service_s": self.service,
                "now": now,
                "busy_s": busy,
                "running": self.running,
                "waiting": sum(1 for g in self.waiting if g.state == "waiting"),
                "started": self.started,
                "completed": self.completed,
                "cancelled": self.cancelled,
                "max_waiting": self.max_waiting,
                "log": [[g.tag, g.arrival, g.start, g.end] for g in self.log],
            }
        )

    def reset(self) -> None:
        self.log = [g for g in self.log if g.state != "done"]
        self.started = self.completed = self.cancelled = self.max_waiting = 0


class OllamaProtocol(asyncio.Protocol):
    """One client connection. Requests are answered in order; while a stream is being sent, further
    pipelined requests wait in the buffer."""

    def __init__(self, answers: Answers, slots: Slots | None = None) -> None:
        self._answers = answers
        self._slots = slots
        self._generation: Generation | None = None
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._streaming = False
        self._sent_chunks = 0
        self._close_after = False
        self._openai = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        if self._generation is not None and self._slots is not None:
            self._slots.end(self._generation, cancelled=True)
            self._generation = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._streaming:
            self._answer_buffered()

    def _answer_buffered(self) -> None:
        buffer = self._buffer
        while not self._streaming and self._transport is not None:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(buffer[:head_end])
            try:
                length = _content_length(head)
            except ValueError:
                self._transport.write(self._answers.bad_request)
                self._transport.close()
                return
            total = head_end + 4 + length
            if len(buffer) < total:
                return
            body = bytes(buffer[head_end + 4 : total])
            del buffer[:total]
            self._close_after = b"\r\nconnection: close" in head.lower()
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        answers = self._answers
        target = head[: head.find(b"\r\n")].split(b" ")
        method, path = target[0], target[1] if len(target) > 1 else b"/"
        if method == b"POST" and path in (b"/api/generate", b"/api/chat", b"/v1/chat/completions"):
            try:
                flags = _flags_decoder.decode(body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self._finish(answers.bad_request)
                return
            openai = path == b"/v1/chat/completions"
            stream = flags.stream and not openai
            if self._slots is not None:
                # While it waits for (or holds) a slot, nothing else is read from this connection.
                self._streaming = True
                self._openai = openai
                self._generation = Generation(self, stream, flags.prompt, time.monotonic())
                self._slots.submit(self._generation)
                return
            if stream:
                self._start_stream()
                return
            self._finish(answers.openai_answer if openai else answers.json_answer)
        elif self._slots is not None and path.startswith(b"/bench/"):
            if path == b"/bench/stats":
                self._finish(_response("200 OK", "application/json", self._slots.stats()))
            elif path == b"/bench/release" and method == b"POST":
                self._slots.release()
                self._finish(answers.empty_ok)
            elif path == b"/bench/hold" and method == b"POST":
                self._slots.held = True
                self._finish(answers.empty_ok)
            elif path == b"/bench/reset" and method == b"POST":
                self._slots.reset()
                self._finish(answers.empty_ok)
            else:
                self._finish(answers.not_found)
        elif method == b"GET" and path == b"/api/tags":
            self._finish(answers.tags)
        elif method == b"GET" and path == b"/api/version":
            self._finish(answers.version)
        elif method in (b"GET", b"HEAD") and path == b"/":
            self._finish(answers.root)
        else:
            self._finish(answers.not_found)

    def _finish(self, response: bytes) -> None:
        assert self._transport is not None
        self._transport.write(response)
        if self._close_after:
            self._transport.close()

    def finish_generation(self, generation: Generation) -> None:
        """A JSON generation's service time is over: answer, give the slot back, read the next request."""
        generation.timer = None
        if self._slots is not None:
            self._slots.end(generation)
        self._generation = None
        self._streaming = False
        if self._transport is None:
            return
        self._finish(self._answers.openai_answer if self._openai else self._answers.json_answer)
        if self._transport is not None and self._buffer:
            self._answer_buffered()

    def start_stream(self, generation: Generation) -> None:
        if self._transport is None:
            return
        self._start_stream()

    def _start_stream(self) -> None:
        assert self._transport is not None
        self._streaming = True
        self._sent_chunks = 0
        self._transport.write(self._answers.stream_head)
        self._send_chunk()

    def _send_chunk(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        answers = self._answers
        self._sent_chunks += 1
        if self._sent_chunks < answers.chunks:
            transport.write(answers.stream_chunk)
            self._timer = self._loop.call_later(answers.delay, self._send_chunk)
            return
        transport.write(answers.stream_final)
        self._streaming = False
        if self._generation is not None and self._slots is not None:
            self._slots.end(self._generation)
            self._generation = None
        if self._close_after:
            transport.close()
        elif self._buffer:
            self._answer_buffered()


async def serve(host: str, port: int, answers: Answers, slots: Slots | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: OllamaProtocol(answers, slots), host, port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake upstream listening on http://{host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="A fast fake Ollama for the benchmark.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--chunks", type=int, default=20, help="NDJSON lines per stream, the final one included"
    )
    parser.add_argument("--delay-ms", type=float, default=20.0, help="time between two stream lines")
    parser.add_argument(
        "--slots", type=int, default=0, help="generations at once, the rest FIFO (0: no limit, no queue)"
    )
    parser.add_argument("--service-ms", type=float, default=0.0, help="with --slots: a JSON answer's time")
    parser.add_argument("--held", action="store_true", help="with --slots: hold until POST /bench/release")
    args = parser.parse_args()
    answers = prepare_answers(args.chunks, args.delay_ms / 1000)
    slots = Slots(args.slots, args.service_ms / 1000, args.held) if args.slots > 0 else None
    uvloop.run(serve(args.host, args.port, answers, slots))


if __name__ == "__main__":
    main()
