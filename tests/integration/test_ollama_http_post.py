"""The Ollama adapter's POST (`adapters/aiohttp_post.py`) against a real socket: the request aiohttp's
session would send, the session's errors, and the two differences it has on purpose (no cookie kept, a
redirect answered)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from yarl import URL

from ollama_gate.adapters import aiohttp_post
from ollama_gate.adapters.ollama_http import OllamaHttpBackend
from ollama_gate.domain.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

BODY = b'{"model":"smollm:latest","prompt":"hi","stream":false}'
ANSWER = b'{"response":"hello","done":true}'


def _answer(head: str, body: bytes = ANSWER) -> bytes:
    return f"HTTP/1.1 {head}\r\nContent-Length: {len(body)}\r\n".encode() + b"\r\n" + body


OK = _answer("200 OK\r\nContent-Type: application/json")


@dataclass
class Upstream:
    """A raw HTTP/1.1 server that keeps every request's bytes and answers each with `answer()`."""

    answer: Callable[[int], bytes | None] = lambda _index: OK
    requests: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    connections: int = 0
    port: int = 0
    read_delay: float = 0.0  # before it reads a connection's first request
    # Answer as soon as the head is in, without reading the body: then close at once ("close") or read
    # nothing more until the client ends the connection ("wait").
    early: str | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await asyncio.sleep(self.read_delay)
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                if self.early is not None:
                    self.requests.append(head)
                    writer.write(self.answer(len(self.requests) - 1) or b"")
                    await writer.drain()
                    if self.early == "wait":
                        await reader.read()  # until the client closes; the body is never read
                    break
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answer(len(self.requests) - 1)
                if answer is None:  # hang up without a word
                    break
                writer.write(answer)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()
            self.closed.set()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()
    server = await asyncio.start_server(state.serve, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    await server.wait_closed()


@pytest.fixture
async def backend(upstream: Upstream) -> AsyncIterator[OllamaHttpBackend]:
    ollama = OllamaHttpBackend(f"http://127.0.0.1:{upstream.port}", connect_timeout=2, read_timeout=5)
    await ollama.start()
    yield ollama
    await ollama.close()


LARGE = b'{"prompt":"' + b"x" * 2**17 + b'"}'


# The same bytes whatever the body's size, and on a connector that closes its connections (the session's
# request then says `Connection: close`); aiohttp's request and response objects are never made.
@pytest.mark.parametrize(
    ("body", "force_close"), [(BODY, False), (LARGE, False), (BODY, True)], ids=["small", "large", "close"]
)
async def test_it_sends_the_bytes_the_session_sends_and_reads_the_answer(
    upstream: Upstream, body: bytes, force_close: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = URL(f"http://127.0.0.1:{upstream.port}/api/generate")
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=5)
    connector = aiohttp.TCPConnector(force_close=force_close)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False, timeout=timeout) as session:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as through:
            assert await through.read() == ANSWER
        target = aiohttp_post.PostTarget(url, session)
        made = [_count_calls(monkeypatch, aiohttp.ClientRequest, "__init__")]
        made.append(_count_calls(monkeypatch, aiohttp.ClientResponse, "__init__"))
        for _ in range(2):
            lean = await aiohttp_post.post(connector, target, body, timeout, 2**16)
            assert (lean.status, lean.headers["Content-Type"]) == (200, "application/json")
            assert await lean.read() == ANSWER
            lean.release()
    assert made == [[0], [0]]
    assert len(upstream.requests) == 3
    assert upstream.requests[0] == upstream.requests[1] == upstream.requests[2]
    assert upstream.requests[1].startswith(b"POST /api/generate HTTP/1.1\r\n")
    assert upstream.requests[1].endswith(b"\r\n\r\n" + body)
    assert (b"connection: close" in upstream.requests[1].lower()) is force_close
    assert upstream.connections == (3 if force_close else 1)


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> list[int]:
    """A one-item list that counts the calls of `owner.name` from now on."""
    calls = [0]
    original = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


async def test_its_connections_are_kept_alive_and_reused(
    upstream: Upstream, backend: OllamaHttpBackend
) -> None:
    for _ in range(3):
        assert await (await backend.post("/api/generate", BODY)).read() == ANSWER
    assert len(upstream.requests) == 3
    assert upstream.connections == 1
    assert not upstream.closed.is_set()


async def test_a_cookie_the_upstream_sets_never_goes_back(upstream: Upstream) -> None:
    # By name, not by address: aiohttp's session keeps no cookie from an IP address.
    ollama = OllamaHttpBackend(f"http://localhost:{upstream.port}", connect_timeout=2, read_timeout=5)
    await ollama.start()
    upstream.answer = lambda _index: _answer("200 OK\r\nSet-Cookie: session=alice; Path=/")
    try:
        for _ in range(2):
            assert await (await ollama.post("/api/generate", BODY)).read() == ANSWER
    finally:
        await ollama.close()
    assert len(upstream.requests) == 2
    assert b"cookie" not in upstream.requests[1].lower()


async def test_a_redirect_is_answered_not_followed(upstream: Upstream, backend: OllamaHttpBackend) -> None:
    upstream.answer = lambda _index: _answer("307 Temporary Redirect\r\nLocation: /elsewhere", b"")
    response = await backend.post("/api/generate", BODY)
    assert response.status == 307
    assert await response.read() == b""
    assert len(upstream.requests) == 1


async def test_an_upstream_that_hangs_up_is_a_lost_connection(
    upstream: Upstream, backend: OllamaHttpBackend
) -> None:
    upstream.answer = lambda _index: None
    with pytest.raises(UpstreamError, match="connection to Ollama lost"):
        await backend.post("/api/generate", BODY)


async def test_an_upstream_that_is_not_there_is_offline() -> None:
    server = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    ollama = OllamaHttpBackend(f"http://127.0.0.1:{port}", connect_timeout=2, read_timeout=5, name="gpu-a")
    await ollama.start()
    try:
        with pytest.raises(UpstreamUnavailable, match="cannot connect to gpu-a"):
            await ollama.post("/api/generate", BODY)
    finally:
        await ollama.close()


async def test_a_caller_that_leaves_while_it_waits_closes_the_connection(
    upstream: Upstream, backend: OllamaHttpBackend
) -> None:
    upstream.answer = lambda _index: b""  # answers nothing, keeps the connection
    waiting = asyncio.ensure_future(backend.post("/api/generate", BODY))
    while not upstream.requests:
        await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # The upstream sees the connection end: Ollama stops a generation whose client is gone.
    await asyncio.wait_for(upstream.closed.wait(), 5)
    assert len(upstream.requests) == 1


async def test_an_informational_answer_is_passed_over(upstream: Upstream, backend: OllamaHttpBackend) -> None:
    upstream.answer = lambda _index: b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    response = await backend.post("/api/generate", BODY)
    assert (response.status, await response.read()) == (200, ANSWER)


async def test_an_answer_that_is_not_http_is_a_lost_connection(
    upstream: Upstream, backend: OllamaHttpBackend
) -> None:
    upstream.answer = lambda _index: b"SSH-2.0-OpenSSH_9.6\r\n\r\n"
    with pytest.raises(UpstreamError, match=r"connection to Ollama lost \(ClientResponseError\)"):
        await backend.post("/api/generate", BODY)
    await asyncio.wait_for(upstream.closed.wait(), 5)


async def test_an_upstream_silent_after_the_request_times_out(upstream: Upstream) -> None:
    upstream.answer = lambda _index: b""  # keeps the connection, answers nothing
    ollama = OllamaHttpBackend(f"http://127.0.0.1:{upstream.port}", connect_timeout=2, read_timeout=0.2)
    await ollama.start()
    try:
        with pytest.raises(UpstreamTimeout) as failure:
            await asyncio.wait_for(ollama.post("/api/generate", BODY), 5)
        # The adapter closed it, not the failure's collection (`failure` holds the frames alive).
        await asyncio.wait_for(upstream.closed.wait(), 5)
        assert failure.type is UpstreamTimeout
    finally:
        await ollama.close()


HUGE = b'{"prompt":"' + b"x" * 2**24 + b'"}'  # 16 MiB: more than the socket's buffers, so writing pauses


@pytest.mark.parametrize("then", ["close", "wait"])
async def test_an_answer_before_a_large_request_is_out_is_read_and_its_connection_ends(
    upstream: Upstream, backend: OllamaHttpBackend, then: str
) -> None:
    # Ollama may refuse a request from its head (a 413, a 404 for an unknown path) and never read the
    # body: the answer is the caller's, and the connection, with unsent bytes, never serves another.
    refusal = b'{"error":"request too large"}'
    upstream.early = then
    upstream.answer = lambda _index: _answer("413 Request Entity Too Large", refusal)
    response = await asyncio.wait_for(backend.post("/api/generate", HUGE), 5)
    assert (response.status, await asyncio.wait_for(response.read(), 5)) == (413, refusal)
    await asyncio.wait_for(upstream.closed.wait(), 5)
    upstream.early = None
    upstream.answer = lambda _index: OK
    assert await (await asyncio.wait_for(backend.post("/api/generate", BODY), 5)).read() == ANSWER
    assert upstream.connections == 2


async def test_the_read_timeout_starts_once_a_large_request_is_out(upstream: Upstream) -> None:
    # The upstream takes longer than the read timeout to start reading the request, and that is not
    # silence (the session waits for the same drain).
    huge = HUGE
    upstream.read_delay = 0.6
    ollama = OllamaHttpBackend(f"http://127.0.0.1:{upstream.port}", connect_timeout=2, read_timeout=0.3)
    await ollama.start()
    try:
        response = await asyncio.wait_for(ollama.post("/api/generate", huge), 10)
        assert (response.status, await response.read()) == (200, ANSWER)
    finally:
        await ollama.close()
    assert upstream.requests == [upstream.requests[0]]
    assert upstream.requests[0].endswith(b"\r\n\r\n" + huge)


async def test_a_read_still_waiting_when_the_answer_is_closed_fails_at_once(
    upstream: Upstream, backend: OllamaHttpBackend
) -> None:
    # A head and part of its body, then nothing: a closed connection no longer feeds the body's stream,
    # so without being told the reader would wait for ever.
    upstream.answer = lambda _index: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    response = await backend.post("/api/generate", BODY)
    reading = asyncio.ensure_future(response.read())
    await asyncio.sleep(0.05)
    assert not reading.done()
    response.close()
    with pytest.raises(UpstreamError, match="connection to Ollama lost"):
        await asyncio.wait_for(reading, 5)
    await asyncio.wait_for(upstream.closed.wait(), 5)
