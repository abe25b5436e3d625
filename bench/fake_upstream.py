"""A fast fake Ollama for load: a raw asyncio Protocol on uvloop, HTTP/1.1 keep-alive, run as its own process.

`python -m bench.fake_upstream --port 11500 --chunks 20 --delay-ms 20`

- `POST /api/generate` with `"stream": false`: one JSON answer with the final-chunk fields and token counts.
- `POST /api/generate` otherwise (Ollama streams by default): `--chunks` NDJSON lines in chunked encoding,
  `--delay-ms` apart, the last one the `done: true` chunk with `done_reason` and the token counts.
- `GET /api/tags`, `GET /api/version`, `GET /`: what Ollama answers.

Every answer is encoded once at start-up: per request the server only finds the end of the head, reads
`Content-Length` and the `stream` flag, and writes prepared bytes. It must never be the bottleneck, so the
bench prints its direct throughput next to the gateway's.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from dataclasses import dataclass
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
        chunks=max(chunks, 1),
        delay=delay,
    )


class _GenerateFlags(msgspec.Struct):
    stream: bool = True


_flags_decoder = msgspec.json.Decoder(_GenerateFlags)


def _content_length(head: bytes) -> int:
    lowered = head.lower()
    start = lowered.find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    start += len(b"\r\ncontent-length:")
    end = lowered.find(b"\r\n", start)
    return int(lowered[start : end if end >= 0 else len(lowered)])


class OllamaProtocol(asyncio.Protocol):
    """One client connection. Requests are answered in order; while a stream is being sent, further
    pipelined requests wait in the buffer."""

    def __init__(self, answers: Answers) -> None:
        self._answers = answers
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._streaming = False
        self._sent_chunks = 0
        self._close_after = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None

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
        if method == b"POST" and path == b"/api/generate":
            try:
                stream = _flags_decoder.decode(body).stream
            except (msgspec.DecodeError, msgspec.ValidationError):
                self._finish(answers.bad_request)
                return
            if stream:
                self._start_stream()
                return
            self._finish(answers.json_answer)
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
        if self._close_after:
            transport.close()
        elif self._buffer:
            self._answer_buffered()


async def serve(host: str, port: int, answers: Answers) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: OllamaProtocol(answers), host, port, backlog=4096, reuse_address=True
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
    args = parser.parse_args()
    answers = prepare_answers(args.chunks, args.delay_ms / 1000)
    uvloop.run(serve(args.host, args.port, answers))


if __name__ == "__main__":
    main()
