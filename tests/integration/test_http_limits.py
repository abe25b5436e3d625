"""The HTTP layer's limits against real half-open sockets: what a server on the internet meets.

Each test starts its own gateway with short timeouts and prints what it measured (`pytest -s` shows it).
Bounds on time are generous (seconds, not milliseconds): they catch "never", not "slowish".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import HIGH_LIMITS, GatewayProcess

# A head the server waits on: the request line and one header, but never the blank line that ends it.
PARTIAL_HEAD = b"GET /api/status HTTP/1.1\r\nHost: gate\r\n"
# How long past a timeout the server may take to act on it before the test calls it "never".
MARGIN = 10.0


async def read_until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes | None:
    """Everything the server sends until it closes the connection; None if it is still open after
    `timeout` seconds. A reset counts as closed (what arrived before it is returned)."""
    received = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return bytes(received)


def status_of(answer: bytes) -> int | None:
    """The status code of the first response in `answer`, None for a connection closed without one."""
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer[9:12])


def body_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


class PeakRss:
    """Samples a process's resident memory every 20 ms in a thread; `peak` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.start = self._process.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


MB = 1024 * 1024

# -- 1. request heads larger than OLLAMA_GATE_MAX_HEADER_BYTES ------------------------------------------

HEAD_FLOOD_CONNECTIONS = 20
HEAD_FLOOD_BYTES = 16 * MB
# 20 connections x 64 KB of head (plus the event loop's read buffers) is a few MB; without the bound the
# audit saw +350 MB. 48 MB leaves room for the allocator's noise and nothing like the real thing.
HEAD_FLOOD_RSS_GROWTH = 48 * MB


@pytest.fixture(scope="module")
def default_gate(
    tmp_path_factory: pytest.TempPathFactory, module_ollama: FakeOllama
) -> Iterator[GatewayProcess]:
    """A gateway with the default HTTP limits (64 KB of head)."""
    with GatewayProcess(
        tmp_path_factory.mktemp("limits"), ollama_url=module_ollama.url, env=HIGH_LIMITS
    ) as gate:
        yield gate


async def send_huge_head(gate: GatewayProcess, filler: int) -> bytes:
    """A request whose head carries a header of `filler` bytes, sent as fast as the server reads it;
    what the server answered (b"" when it closed without an answer)."""
    reader, writer = await asyncio.open_connection(gate.host, gate.port)
    writer.write(b"GET /api/status HTTP/1.1\r\nHost: gate\r\nConnection: close\r\nX-Filler: ")
    piece = b"a" * 262_144
    try:
        for _ in range(filler // len(piece)):
            writer.write(piece)
            await writer.drain()
        writer.write(b"\r\n\r\n")
        await writer.drain()
    except ConnectionError:
        pass  # the server stopped reading and closed: what it answered first is in the read buffer
    answer = await read_until_closed(reader, timeout=30)
    writer.close()
    assert answer is not None, "the server kept a 16 MB head's connection open"
    return answer


def test_twenty_sixteen_megabyte_heads_are_refused_and_memory_stays_flat(
    default_gate: GatewayProcess,
) -> None:
    assert default_gate.process is not None

    async def flood() -> list[bytes]:
        return await asyncio.gather(
            *(send_huge_head(default_gate, HEAD_FLOOD_BYTES) for _ in range(HEAD_FLOOD_CONNECTIONS))
        )

    with PeakRss(default_gate.process.pid) as rss:
        answers = asyncio.run(flood())
    print(
        f"\nhead flood: RSS {rss.start / MB:.1f} MB before, peak {rss.peak / MB:.1f} MB "
        f"(+{(rss.peak - rss.start) / MB:.1f} MB) over {HEAD_FLOOD_CONNECTIONS} x 16 MB heads; "
        f"statuses {sorted({status_of(a) for a in answers}, key=str)}"
    )
    assert {status_of(answer) for answer in answers} <= {431, None}, answers
    assert rss.peak - rss.start < HEAD_FLOOD_RSS_GROWTH
    # The gateway goes on serving.
    assert httpx.get(default_gate.url + "/api/status", timeout=10).status_code == 200


def raw_exchange(gate: GatewayProcess, request: bytes, timeout: float = 10.0, then: bytes = b"") -> bytes:
    """Send `request` on a fresh connection (and `then`, a moment later: in reads of its own), and read
    until the server closes it."""
    with socket.create_connection((gate.host, gate.port), timeout=timeout) as sock:
        sock.sendall(request)
        if then:
            time.sleep(0.2)
            sock.sendall(then)
        received = bytearray()
        with contextlib.suppress(ConnectionError):
            while chunk := sock.recv(65536):
                received += chunk
    return bytes(received)


def test_a_head_over_the_limit_is_431_with_a_json_body(default_gate: GatewayProcess) -> None:
    oversized = b"GET /api/status HTTP/1.1\r\nHost: gate\r\nX-Filler: " + b"a" * 100_000 + b"\r\n\r\n"

    answer = raw_exchange(default_gate, oversized)

    assert status_of(answer) == 431, answer[:200]
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert json.loads(body_of(answer)) == {"detail": "request headers too large"}


def test_a_head_just_under_the_limit_is_served(default_gate: GatewayProcess) -> None:
    # 60 KB of cookies is ugly but legal under a 64 KB bound.
    request = (
        b"GET /api/status HTTP/1.1\r\nHost: gate\r\nConnection: close\r\nCookie: "
        + b"c" * 60_000
        + b"\r\n\r\n"
    )
    assert status_of(raw_exchange(default_gate, request)) == 200


def test_a_head_over_the_limit_in_small_pieces_is_431_too(default_gate: GatewayProcess) -> None:
    # The bound counts every read of the head, not what the parser reports at the end of each header.
    with socket.create_connection((default_gate.host, default_gate.port), timeout=10) as sock:
        sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: gate\r\nX-Filler: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(80):
                sock.sendall(b"b" * 1024)
                time.sleep(0.002)
        answer = bytearray()
        with contextlib.suppress(ConnectionError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert status_of(bytes(answer)) == 431, bytes(answer)[:200]


def test_pipelined_requests_are_answered_in_order_on_one_connection(default_gate: GatewayProcess) -> None:
    two = (
        b"GET /api/version HTTP/1.1\r\nHost: gate\r\n\r\n"
        b"GET /schema/openapi.json HTTP/1.1\r\nHost: gate\r\nConnection: close\r\n\r\n"
    )
    answer = raw_exchange(default_gate, two)
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2, answer[:300]
    assert answer.index(b'"version"') < answer.index(b'"openapi"')


def chunked_chat(trailer: bytes) -> bytes:
    body = json.dumps({"message": "chunked"}).encode()
    return (
        b"POST /chat HTTP/1.1\r\nHost: gate\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n"
        + trailer
        + b"\r\n"
    )


def test_a_chunked_body_with_a_small_trailer_is_served(default_gate: GatewayProcess) -> None:
    assert status_of(raw_exchange(default_gate, chunked_chat(b"X-Checksum: 1\r\n"))) == 200


def test_trailers_share_the_head_bound(default_gate: GatewayProcess) -> None:
    # Trailers are headers after the body: the parser buffers them like a head, so they are bounded too.
    # They come in reads of their own, as a client that streams them does: bytes read along with body
    # bytes count as progress (a read is never more than the bound plus one read, whatever is in it).
    request = chunked_chat(b"X-Filler: " + b"t" * 200_000 + b"\r\n")
    trailer_at = request.index(b"\r\n0\r\n") + len(b"\r\n0\r\n")
    answer = raw_exchange(default_gate, request[:trailer_at], then=request[trailer_at:])
    assert status_of(answer) in (431, None), answer[:200]


def test_a_body_sent_after_100_continue_is_served(default_gate: GatewayProcess) -> None:
    body = json.dumps({"message": "expect"}).encode()
    with socket.create_connection((default_gate.host, default_gate.port), timeout=10) as sock:
        sock.sendall(
            b"POST /chat HTTP/1.1\r\nHost: gate\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(body)
        answer = bytearray()
        while chunk := sock.recv(65536):
            answer += chunk
    assert status_of(bytes(answer)) == 200, bytes(answer)[:300]


# -- 2. heads that never finish: OLLAMA_GATE_HEADER_TIMEOUT ----------------------------------------------

SLOW_HEADS = 2_000
HEADER_TIMEOUT = 3.0


async def hold_partial_head(gate: GatewayProcess, opened: asyncio.Semaphore) -> tuple[float, float | None]:
    """(seconds to connect and send a partial head, seconds from then until the server closed; None if
    it never did within the timeout + MARGIN)."""
    async with opened:
        began = time.monotonic()
        reader, writer = await asyncio.open_connection(gate.host, gate.port)
        writer.write(PARTIAL_HEAD)
        await writer.drain()
    sent = time.monotonic()
    answer = await read_until_closed(reader, HEADER_TIMEOUT + MARGIN)
    writer.close()
    if answer is None:
        return sent - began, None
    assert status_of(answer) in (408, None), answer[:200]
    return sent - began, time.monotonic() - sent


def test_two_thousand_unfinished_heads_are_all_closed_and_service_goes_on(
    tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    env = HIGH_LIMITS | {"HEADER_TIMEOUT": str(HEADER_TIMEOUT)}
    with GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env=env) as gate:

        async def flood() -> tuple[list[tuple[float, float | None]], int, float]:
            opened = asyncio.Semaphore(200)
            holders = [asyncio.create_task(hold_partial_head(gate, opened)) for _ in range(SLOW_HEADS)]
            # A normal request while the flood is in progress (the semaphore still throttles the
            # openings or the holders are waiting on the server).
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient(timeout=10) as client:
                status = (await client.get(gate.url + "/api/status")).status_code
            began = time.monotonic()
            results = await asyncio.gather(*holders)
            return results, status, time.monotonic() - began

        results, status, waited = asyncio.run(flood())

    closed_after = [after for _, after in results if after is not None]
    never_closed = len(results) - len(closed_after)
    print(
        f"\n{SLOW_HEADS} partial heads (HEADER_TIMEOUT={HEADER_TIMEOUT:g}): {never_closed} still open after "
        f"{HEADER_TIMEOUT + MARGIN:g} s; closed {min(closed_after, default=0):.2f}-"
        f"{max(closed_after, default=0):.2f} s after their partial head; all done {waited:.2f} s after "
        f"the normal request (status {status})"
    )
    assert status == 200
    assert never_closed == 0
    assert min(closed_after) >= HEADER_TIMEOUT - 1.5  # not closed at once, as if refused


def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(
    tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    # A long head timeout, so that only the keep-alive timeout (1 s, uvicorn's default is 5 s) can act.
    env = HIGH_LIMITS | {"KEEPALIVE_TIMEOUT": "1", "HEADER_TIMEOUT": "60"}
    with GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env=env) as gate:

        async def idle_after_one_request() -> tuple[bytes | None, float]:
            reader, writer = await asyncio.open_connection(gate.host, gate.port)
            writer.write(b"GET /api/status HTTP/1.1\r\nHost: gate\r\n\r\n")
            await writer.drain()
            answered = time.monotonic()
            answer = await read_until_closed(reader, timeout=4)
            writer.close()
            return answer, time.monotonic() - answered

        answer, seconds = asyncio.run(idle_after_one_request())

    assert answer is not None, "the idle connection was still open after 4 s"
    assert status_of(answer) == 200
    print(f"\nidle keep-alive connection closed {seconds:.2f} s after its answer (KEEPALIVE_TIMEOUT=1)")


# -- 3. bodies that never finish: OLLAMA_GATE_BODY_TIMEOUT -----------------------------------------------

STALLED_BODIES = 50
BODY_TIMEOUT = 1.0
CHUNKED_HEAD = (
    b"POST /chat HTTP/1.1\r\nHost: gate\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


async def stall_a_chunked_body(gate: GatewayProcess) -> float | None:
    """Seconds until the server closed a connection whose chunked body stopped after one chunk."""
    reader, writer = await asyncio.open_connection(gate.host, gate.port)
    writer.write(CHUNKED_HEAD + b'8\r\n{"messag\r\n')
    await writer.drain()
    sent = time.monotonic()
    answer = await read_until_closed(reader, BODY_TIMEOUT + MARGIN)
    writer.close()
    if answer is None:
        return None
    assert status_of(answer) in (408, None), answer[:200]
    return time.monotonic() - sent


def test_fifty_unterminated_chunked_bodies_are_closed_and_the_app_lets_go(
    tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    env = HIGH_LIMITS | {"BODY_TIMEOUT": str(BODY_TIMEOUT), "SHUTDOWN_TIMEOUT": "60"}
    gate = GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env=env).start()
    try:

        async def stall_all() -> list[float | None]:
            return await asyncio.gather(*(stall_a_chunked_body(gate) for _ in range(STALLED_BODIES)))

        closed_after = asyncio.run(stall_all())
        assert gate.process is not None
        # The handlers that waited for those bodies were told of the disconnect and ended: a clean stop
        # has nothing to wait for, though it would wait up to 60 s for a request still in flight.
        stopping = time.monotonic()
        exit_code = gate.terminate(signal.SIGTERM, timeout=30)
        stopped_in = time.monotonic() - stopping
    finally:
        gate.kill()

    done = [seconds for seconds in closed_after if seconds is not None]
    print(
        f"\n{STALLED_BODIES} stalled chunked bodies (BODY_TIMEOUT={BODY_TIMEOUT:g}): "
        f"{len(closed_after) - len(done)} still open; closed {min(done, default=0):.2f}-"
        f"{max(done, default=0):.2f} s after their last byte; SIGTERM then exited in {stopped_in:.2f} s"
    )
    assert len(done) == STALLED_BODIES
    assert exit_code == 0
    assert stopped_in < 10
    assert "Traceback" not in gate.log()


def test_a_slow_but_steady_body_is_not_cut(tmp_path: Path, fake_ollama: FakeOllama) -> None:
    body = json.dumps({"message": "steady " + "x" * 40}).encode()
    pieces = [body[i : i + 10] for i in range(0, len(body), 10)]
    env = HIGH_LIMITS | {"BODY_TIMEOUT": str(BODY_TIMEOUT)}
    with (
        GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env=env) as gate,
        socket.create_connection((gate.host, gate.port), timeout=10) as sock,
    ):
        sock.sendall(
            b"POST /chat HTTP/1.1\r\nHost: gate\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        # Longer in all (~3 s) than the body timeout, but never silent for as long as it.
        for piece in pieces:
            time.sleep(BODY_TIMEOUT / 2)
            sock.sendall(piece)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    assert status_of(bytes(received)) == 200, bytes(received)[:300]


# -- 4. OLLAMA_GATE_MAX_CONNECTIONS ---------------------------------------------------------------------

MAX_CONNECTIONS = 50


async def refused_in(gate: GatewayProcess) -> tuple[int | None, float | None]:
    """(status, seconds) for a connection made while the gateway is full; seconds is None when it was
    neither answered nor closed within 5 s."""
    began = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(gate.host, gate.port)
        writer.write(b"GET /api/status HTTP/1.1\r\nHost: gate\r\n\r\n")
        await writer.drain()
    except ConnectionError:
        return None, time.monotonic() - began
    answer = await read_until_closed(reader, timeout=5)
    writer.close()
    if answer is None:
        return None, None
    return status_of(answer), time.monotonic() - began


def test_connections_beyond_the_ceiling_are_refused_and_service_resumes(
    tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    env = HIGH_LIMITS | {"MAX_CONNECTIONS": str(MAX_CONNECTIONS), "HEADER_TIMEOUT": "60"}
    with GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env=env) as gate:
        holders = [
            socket.create_connection((gate.host, gate.port), timeout=10) for _ in range(MAX_CONNECTIONS)
        ]
        try:
            time.sleep(1.0)  # let the server accept every holder before the extra ones arrive

            async def extras() -> list[tuple[int | None, float | None]]:
                return await asyncio.gather(*(refused_in(gate) for _ in range(10)))

            refused = asyncio.run(extras())
        finally:
            for holder in holders:
                holder.close()
        resumed = False
        for _ in range(50):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(gate.url + "/api/status", timeout=5).status_code == 200:
                    resumed = True
                    break
            time.sleep(0.1)

    print(f"\nbeyond MAX_CONNECTIONS={MAX_CONNECTIONS}: {refused}")
    assert all(seconds is not None for _, seconds in refused), refused
    assert {status for status, _ in refused} <= {503, None}, refused
    assert resumed


# -- 6. uvicorn's own proxy headers are off -------------------------------------------------------------


def test_forwarded_for_from_loopback_does_not_change_the_anonymous_identity(
    tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    # No trusted proxies: the gateway's rule believes no forwarding header. uvicorn's middleware, on by
    # default, believed them from 127.0.0.1, so every rotated address had a fresh quota.
    with GatewayProcess(tmp_path, ollama_url=fake_ollama.url, env={"ANON_RATE_LIMIT": "3/60"}) as gate:
        with httpx.Client(timeout=10) as client:
            statuses = [
                client.post(
                    gate.url + "/chat",
                    json={"message": "who am i"},
                    headers={"X-Forwarded-For": f"203.0.113.{i}"},
                ).status_code
                for i in range(4)
            ]
        rows = gate.usage_rows(3)

    assert statuses == [200, 200, 200, 429]
    assert {row["client_ip"] for row in rows} == {"127.0.0.1"}


# -- the open-file limit --------------------------------------------------------------------------------


@contextlib.contextmanager
def soft_open_file_limit(soft: int) -> Iterator[int]:
    """Lower this process's soft RLIMIT_NOFILE (children inherit it) for the block; yields the hard one."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (before, hard))


def test_serve_raises_the_open_file_soft_limit_to_the_hard_limit(
    tmp_path: Path, fake_ollama: FakeOllama
) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard open-file limit is {hard}: nothing to raise to")
    gate = GatewayProcess(tmp_path, ollama_url=fake_ollama.url)
    with soft_open_file_limit(1024):
        gate.start()
    try:
        assert gate.process is not None
        soft_in_gateway, hard_in_gateway = psutil.Process(gate.process.pid).rlimit(psutil.RLIMIT_NOFILE)
    finally:
        gate.terminate()
    assert soft_in_gateway == hard_in_gateway == hard
