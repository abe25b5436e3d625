"""Load clients on raw asyncio Protocols (uvloop), run as their own process so the bench can sample the
gateway's memory without competing with them for the GIL.

`python -m bench.load_client streams --port P --path /chat/stream --count 1000 --keys-file F --chunks 20`
  opens `count` connections, then sends every request at once and records, per stream, the time from
  its request to the first body byte and whether every NDJSON line arrived (the last one `done: true`,
  no `error` line).
  With `--pace-ms N` the requests go out one every N ms instead, for first bytes without a queue.
`python -m bench.load_client json --port P --path /chat --count 20000 --connections 20 --keys-file F`
  the fallback generator for JSON chat when `wrk` is missing: keep-alive connections, each sending its
  next request when its answer is complete, until exactly `count` requests were answered.

`python -m bench.load_client fairness --port P --path /chat --heavy 200 --light 10 --keys-file F`
  the scheduler's scenario: the first key sends `--heavy` requests at once, each on its own connection;
  the next `--light` keys send one request each, `--light-start-ms` after the flood and `--light-every-ms`
  apart. Each request's prompt names its user (`heavy`, `light-0`, ...) so the fake upstream's log says
  whose generation ran when. Prints every request's tag, send time (time.monotonic, the same clock as the
  fake upstream's on Linux), latency and status.
`python -m bench.load_client waiting --port P --path /chat --count 10000 --keys-file F`
  opens `count` connections, sends every request, prints `SENT <monotonic time>` on stderr, and waits for
  every answer (the bench frees the upstream's slots meanwhile); then prints the answers by status and
  the time from the first request to the last answer.

Each prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import cast

import msgspec
import uvloop

GATEWAY_BODY = b'{"message":"what is a gateway"}'
DIRECT_STREAM_BODY = b'{"model":"smollm:latest","prompt":"what is a gateway","stream":true}'
DIRECT_JSON_BODY = b'{"model":"smollm:latest","prompt":"what is a gateway","stream":false}'


def build_request(host: str, port: int, path: str, body: bytes, key: str | None) -> bytes:
    auth = f"X-API-Key: {key}\r\n" if key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def read_keys(path: str | None) -> list[str]:
    if not path:
        return []
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of `values` (not necessarily sorted); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _status_of(head: bytes) -> int:
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _content_length(head: bytes) -> int | None:
    lowered = head.lower()
    start = lowered.find(b"\r\ncontent-length:")
    if start < 0:
        return None
    start += len(b"\r\ncontent-length:")
    end = lowered.find(b"\r\n", start)
    return int(lowered[start : end if end >= 0 else len(lowered)])


def dechunk(data: bytes) -> bytes | None:
    """The payload of a chunked body that ends with its terminating chunk, or None if it is malformed."""
    out = bytearray()
    position = 0
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            return None
        try:
            size = int(data[position:line_end].split(b";")[0], 16)
        except ValueError:
            return None
        if size == 0:
            return bytes(out)
        start = line_end + 2
        out += data[start : start + size]
        position = start + size + 2


# -- streams ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class StreamResult:
    status: int = 0
    first_byte: float | None = None  # seconds from the request to the first body byte
    lines: int = 0
    complete: bool = False
    error: str | None = None
    sent_at: float = 0.0  # time.monotonic() when the request was written
    done_at: float = 0.0  # time.monotonic() when the answer was complete


class StreamProbe(asyncio.Protocol):
    """One stream on its own connection: headers, then a chunked NDJSON body or a Content-Length error."""

    def __init__(self, request: bytes, expected_lines: int, done: asyncio.Future[StreamResult]) -> None:
        self._request = request
        self._expected_lines = expected_lines
        self._done = done
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head_end = -1
        self._chunked = False
        self._length: int | None = None
        self._sent_at = 0.0
        self.result = StreamResult()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def send(self) -> None:
        assert self._transport is not None
        self._sent_at = time.perf_counter()
        self.result.sent_at = time.monotonic()
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self._buffer += data
        if self._head_end < 0:
            self._head_end = self._buffer.find(b"\r\n\r\n")
            if self._head_end < 0:
                return
            head = bytes(self._buffer[: self._head_end])
            self.result.status = _status_of(head)
            self._chunked = b"transfer-encoding: chunked" in head.lower()
            self._length = _content_length(head)
        body_start = self._head_end + 4
        if self.result.first_byte is None and len(self._buffer) > body_start:
            self.result.first_byte = now - self._sent_at
        if self._chunked:
            ended = self._buffer.endswith(b"0\r\n\r\n")
        else:
            ended = self._length is not None and len(self._buffer) >= body_start + self._length
        if ended:
            self._finish(bytes(self._buffer[body_start:]))

    def _finish(self, body: bytes) -> None:
        if self._done.done():
            return
        result = self.result
        payload = dechunk(body) if self._chunked else body
        if payload is None:
            # A "0\r\n\r\n" inside a chunk's data, not the terminator: wait for more.
            return
        result.done_at = time.monotonic()
        lines = [line for line in payload.split(b"\n") if line]
        result.lines = len(lines)
        if result.status != 200:
            result.error = f"status {result.status}"
        elif any(b'"error"' in line for line in lines):
            result.error = "error line in the stream"
        elif not lines or b'"done":true' not in lines[-1]:
            result.error = "no final done chunk"
        elif len(lines) != self._expected_lines:
            result.error = f"{len(lines)} lines, expected {self._expected_lines}"
        else:
            result.complete = True
        self._done.set_result(result)
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self.result.error = f"connection closed early ({type(exc).__name__ if exc else 'EOF'})"
            self._done.set_result(self.result)


async def _connect_all(
    host: str, port: int, requests: list[bytes], expected_lines: int, connect_parallelism: int
) -> tuple[list[StreamProbe], list[asyncio.Future[StreamResult]], int]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(connect_parallelism)
    connected: list[tuple[StreamProbe, asyncio.Future[StreamResult]] | None] = [None] * len(requests)

    async def connect(index: int, request: bytes) -> None:
        done: asyncio.Future[StreamResult] = loop.create_future()
        probe = StreamProbe(request, expected_lines, done)
        async with gate:
            try:
                await loop.create_connection(lambda: probe, host, port)
            except OSError:
                return
        connected[index] = (probe, done)

    await asyncio.gather(*(connect(index, request) for index, request in enumerate(requests)))
    # In the order of `requests` (the fairness scenario sends the first ones first), failures left out.
    pairs = [pair for pair in connected if pair is not None]
    return [p for p, _ in pairs], [f for _, f in pairs], len(requests) - len(pairs)


async def run_streams(
    host: str,
    port: int,
    path: str,
    body: bytes,
    keys: list[str],
    count: int,
    chunks: int,
    timeout: float,
    pace: float = 0.0,
) -> dict[str, object]:
    """`pace` 0 sends every request at once (a burst); otherwise one request every `pace` seconds."""
    requests = [
        build_request(host, port, path, body, keys[i % len(keys)] if keys else None) for i in range(count)
    ]
    probes, futures, connect_failures = await _connect_all(host, port, requests, chunks, 200)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    if pace > 0:
        begin = loop.time()
        for index, probe in enumerate(probes):
            loop.call_at(begin + index * pace, probe.send)
    else:
        # Every connection is open: send all the requests at once, so they are in flight together.
        for probe in probes:
            probe.send()
    finished, pending = await asyncio.wait(futures, timeout=timeout) if futures else (set(), set())
    elapsed = time.perf_counter() - started
    results = [future.result() for future in finished]
    for future in pending:
        future.cancel()
    first_bytes = [r.first_byte * 1000 for r in results if r.first_byte is not None and r.status == 200]
    errors = Counter(r.error for r in results if r.error)
    if pending:
        errors["timed out"] += len(pending)
    if connect_failures:
        errors["connect failed"] += connect_failures
    return {
        "requested": count,
        "answered_200": sum(1 for r in results if r.status == 200),
        "complete": sum(1 for r in results if r.complete),
        "errors": dict(errors),
        "first_byte_p50_ms": percentile(first_bytes, 0.50),
        "first_byte_p99_ms": percentile(first_bytes, 0.99),
        "elapsed_s": elapsed,
    }


# -- the scheduler's scenarios ---------------------------------------------------------------------


def tagged_body(direct: bool, tag: str) -> bytes:
    """A JSON (not streamed) request whose prompt is `tag`: the fake upstream logs it per generation."""
    if direct:
        return msgspec.json.encode({"model": "smollm:latest", "prompt": tag, "stream": False})
    return msgspec.json.encode({"message": tag})


async def run_fairness(
    host: str,
    port: int,
    path: str,
    direct: bool,
    keys: list[str],
    heavy: int,
    light: int,
    light_start: float,
    light_every: float,
    timeout: float,
) -> dict[str, object]:
    """One heavy user's flood and `light` users' single requests arriving during it (see the module doc)."""
    tags = ["heavy"] * heavy + [f"light-{i}" for i in range(light)]
    keyed = [keys[0] if keys else None] * heavy + [keys[1 + i] if keys else None for i in range(light)]
    requests = [
        build_request(host, port, path, tagged_body(direct, t), k) for t, k in zip(tags, keyed, strict=True)
    ]
    probes, futures, connect_failures = await _connect_all(host, port, requests, 1, 200)
    if connect_failures:
        raise SystemExit(f"{connect_failures} connections failed")
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    for probe in probes[:heavy]:
        probe.send()
    begin = loop.time()
    for index, probe in enumerate(probes[heavy:]):
        loop.call_at(begin + light_start + index * light_every, probe.send)
    finished, pending = await asyncio.wait(futures, timeout=timeout)
    for future in pending:
        future.cancel()
    records = []
    for tag, future in zip(tags, futures, strict=True):
        if future in finished:
            r = future.result()
            records.append([tag, r.sent_at, r.done_at - r.sent_at, r.status, r.complete])
        else:
            records.append([tag, 0.0, -1.0, 0, False])
    return {"started": started, "requests": records, "timed_out": len(pending)}


async def run_waiting(
    host: str, port: int, path: str, keys: list[str], count: int, timeout: float
) -> dict[str, object]:
    """`count` requests in flight at once on their own connections; answers counted by status."""
    requests = [
        build_request(host, port, path, GATEWAY_BODY, keys[i % len(keys)] if keys else None)
        for i in range(count)
    ]
    connect_started = time.monotonic()
    probes, futures, connect_failures = await _connect_all(host, port, requests, 1, 256)
    connected = time.monotonic()
    for probe in probes:
        probe.send()
    sent = time.monotonic()
    sys.stderr.write(f"SENT {sent}\n")
    sys.stderr.flush()
    finished, pending = await asyncio.wait(futures, timeout=timeout) if futures else (set(), set())
    for future in pending:
        future.cancel()
    results = [future.result() for future in finished]
    statuses = Counter(str(r.status) for r in results)
    return {
        "requested": count,
        "connect_failures": connect_failures,
        "connect_s": connected - connect_started,
        "sent_at": sent,
        "statuses": dict(statuses),
        "complete": sum(1 for r in results if r.complete),
        "timed_out": len(pending),
        "last_answer_at": max((r.done_at for r in results), default=sent),
    }


# -- JSON requests (the fallback generator) ------------------------------------------------------------


@dataclass(slots=True)
class JsonTally:
    remaining: int
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)


class JsonConnection(asyncio.Protocol):
    """One keep-alive connection: sends a request, waits for the whole answer, sends the next."""

    def __init__(
        self, requests: list[bytes], offset: int, tally: JsonTally, done: asyncio.Future[None]
    ) -> None:
        self._requests = requests
        self._next = offset
        self._tally = tally
        self._done = done
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._send_next()

    def _send_next(self) -> None:
        tally = self._tally
        if tally.remaining <= 0 or self._transport is None:
            self._stop()
            return
        tally.remaining -= 1
        request = self._requests[self._next % len(self._requests)]
        self._next += 1
        self._sent_at = time.perf_counter()
        self._transport.write(request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self._buffer[:head_end])
        length = _content_length(head) or 0
        if len(self._buffer) < head_end + 4 + length:
            return
        self._tally.latencies_ms.append((time.perf_counter() - self._sent_at) * 1000)
        self._tally.statuses[_status_of(head)] += 1
        del self._buffer[: head_end + 4 + length]
        self._send_next()

    def _stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if not self._done.done():
            self._done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self._done.done():
            self._done.set_result(None)


async def run_json(
    host: str,
    port: int,
    path: str,
    body: bytes,
    keys: list[str],
    count: int,
    connections: int,
    timeout: float,
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    requests = [build_request(host, port, path, body, key) for key in keys] or [
        build_request(host, port, path, body, None)
    ]
    tally = JsonTally(remaining=count)
    futures: list[asyncio.Future[None]] = []
    started = time.perf_counter()
    for index in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        futures.append(done)
        await loop.create_connection(partial(JsonConnection, requests, index * 7, tally, done), host, port)
    await asyncio.wait(futures, timeout=timeout)
    elapsed = time.perf_counter() - started
    answered = sum(tally.statuses.values())
    return {
        "requested": count,
        "answered": answered,
        "answered_200": tally.statuses.get(200, 0),
        "statuses": {str(k): v for k, v in tally.statuses.items()},
        "errors": count - answered,
        "requests_per_s": answered / elapsed if elapsed else 0.0,
        "p50_ms": percentile(tally.latencies_ms, 0.50),
        "p99_ms": percentile(tally.latencies_ms, 0.99),
        "elapsed_s": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark load clients.")
    parser.add_argument("mode", choices=("streams", "json", "fairness", "waiting"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--direct", action="store_true", help="send Ollama's /api/generate body")
    parser.add_argument("--keys-file")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--pace-ms", type=float, default=0.0, help="streams: one request every N ms (0: all at once)"
    )
    parser.add_argument("--heavy", type=int, default=200)
    parser.add_argument("--light", type=int, default=10)
    parser.add_argument("--light-start-ms", type=float, default=1000.0)
    parser.add_argument("--light-every-ms", type=float, default=500.0)
    args = parser.parse_args()
    keys = read_keys(args.keys_file)
    result: dict[str, object]
    if args.mode == "fairness":
        result = uvloop.run(
            run_fairness(
                args.host,
                args.port,
                args.path,
                args.direct,
                keys,
                args.heavy,
                args.light,
                args.light_start_ms / 1000,
                args.light_every_ms / 1000,
                args.timeout,
            )
        )
    elif args.mode == "waiting":
        result = uvloop.run(run_waiting(args.host, args.port, args.path, keys, args.count, args.timeout))
    elif args.mode == "streams":
        body = DIRECT_STREAM_BODY if args.direct else GATEWAY_BODY
        result = uvloop.run(
            run_streams(
                args.host,
                args.port,
                args.path,
                body,
                keys,
                args.count,
                args.chunks,
                args.timeout,
                args.pace_ms / 1000,
            )
        )
    else:
        body = DIRECT_JSON_BODY if args.direct else GATEWAY_BODY
        result = uvloop.run(
            run_json(args.host, args.port, args.path, body, keys, args.count, args.connections, args.timeout)
        )
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")


if __name__ == "__main__":
    main()
