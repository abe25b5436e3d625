"""Ollama over HTTP with aiohttp: one session per process, a keep-alive pool, explicit timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import aiohttp
import msgspec
from aiohttp.http_writer import StreamWriter
from yarl import URL

from ollama_gate.domain.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from ollama_gate.domain.status import ModelInfo

_JSON_HEADERS = {"Content-Type": "application/json"}
_RAW_HEADERS = {"Content-Type": "application/octet-stream"}
_READ_BUFSIZE = 2**18
_CACHED_PATHS = 64
# A body up to this size goes out with the head in `send` itself: with the head (a few hundred bytes)
# it stays under aiohttp's write buffer limit (64 KiB), so aiohttp's own task would not have waited for a
# drain before starting the read timeout either.
_INLINE_BODY = 2**15


def _raised_as_is(error: OSError) -> bool:
    """Whether `_request` lets this OSError through: aiohttp's own errors and timeouts; it raises any
    other as `ClientOSError`."""
    return isinstance(error, aiohttp.ClientError) or (error.errno is None and isinstance(error, TimeoutError))


class _InlineRequest(aiohttp.ClientRequest):
    """aiohttp's POST request, whose `send` writes a small body with the head at once.

    On Python 3.11 aiohttp writes every body in a task of its own (from 3.12 it starts that task eagerly):
    a task, a turn of the loop and a coroutine per request, about 38,000 instructions by callgrind. For a
    small body, with nothing to wait for (writing not paused) and a connection kept alive, `send` here
    writes what that task would have written, as that task would: the head and the body
    coalesced, the end of the message, then the read timeout started. Anything else is aiohttp's own
    `send`. tests/integration/test_ollama_http_post.py compares the bytes with the session's.
    """

    def __init__(self, url: URL, body: bytes, session: aiohttp.ClientSession) -> None:
        super().__init__(
            "POST",
            url,
            headers=_JSON_HEADERS,
            data=body,
            loop=asyncio.get_running_loop(),
            session=session,
            response_class=aiohttp.ClientResponse,
        )
        self._inline_body = body
        # A connector that closes every connection has aiohttp's send add `Connection: close`.
        self._keep_alive = session.connector is not None and not session.connector.force_close

    async def send(self, conn: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        protocol = conn.protocol
        assert protocol is not None, "lean_post sends only on a connection that has its protocol"
        # The constructor leaves nothing else to add (no proxy, chunking, compression, `Expect` or
        # `Connection` header): only what the connection and the body's size decide is checked here.
        if not self._keep_alive or protocol.writing_paused or len(self._inline_body) > _INLINE_BODY:
            return await super().send(conn)
        writer = StreamWriter(protocol, self.loop)
        await writer.write_headers(f"POST {self.url.raw_path_qs} HTTP/1.1", self.headers)
        await writer.write(self._inline_body, drain=False)
        await writer.write_eof()
        protocol.start_timeout()
        response = self.response_class(
            self.method,
            self.original_url,
            writer=None,
            continue100=None,
            timer=self._timer,
            request_info=self.request_info,
            traces=self._traces,
            loop=self.loop,
            session=self._session,
            stream_writer=writer,
        )
        self.response = response  # type: ignore[assignment]  # aiohttp types it as its initial None
        return response


async def lean_post(
    session: aiohttp.ClientSession, url: URL, body: bytes, timeout: aiohttp.ClientTimeout, read_bufsize: int
) -> aiohttp.ClientResponse:
    """`session.post(url, data=body, headers=_JSON_HEADERS)` as aiohttp's own `_request` sends it, without
    the parts of `_request` a POST to Ollama never uses.

    `_request` is general: cookies, redirects, auth, proxies, traces, middleware, a retry for idempotent
    methods (a POST is not one), a total-timeout timer. Counted with callgrind against the bench's fake
    upstream, a round trip through it took 344,000 instructions, through this with aiohttp's own `send`
    272,000, and with `_InlineRequest.send` 232,000; the gateway's whole `/chat` cost about 960,000.

    What is left is what `_request` itself does for a POST: the same `ClientRequest` (so the same bytes
    on the wire), the connector's pool and its connect timeout, the read timeout (`timeout.sock_read`),
    the response parameters the session would set, and the same exceptions. Two differences, both on
    purpose: no cookie is kept (one session serves every caller, so an upstream's cookie must never
    reach another one), and a redirect is answered, not followed (a gateway relays what its upstream
    says). The session's total timeout, default headers, trace configs, middleware and
    `raise_for_status` are not applied: the adapter's session has none of them.
    """
    if session.closed:
        raise RuntimeError("Session is closed")
    connector = session.connector
    assert connector is not None, "a session made by this adapter has its connector"
    request = _InlineRequest(url, body, session)
    try:
        connection = await connector.connect(request, [], timeout)
    except TimeoutError as error:
        raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {url}") from error
    except OSError as error:
        if _raised_as_is(error):
            raise
        raise aiohttp.ClientOSError(*error.args) from error
    protocol = connection.protocol
    assert protocol is not None, "a connection from the pool has its protocol"
    protocol.set_response_params(
        read_until_eof=True, auto_decompress=False, read_timeout=timeout.sock_read, read_bufsize=read_bufsize
    )
    try:
        response = await request.send(connection)
        try:
            await response.start(connection)
        except BaseException:
            response.close()
            raise
    except BaseException as error:
        connection.close()
        if isinstance(error, OSError) and not _raised_as_is(error):
            raise aiohttp.ClientOSError(*error.args) from error
        raise
    return response


class _Tags(msgspec.Struct):
    models: list[dict[str, Any]] = []


def _offline(name: str, error: BaseException) -> UpstreamUnavailable:
    # The server's name, never its address: this text reaches every caller in a 503.
    return UpstreamUnavailable(f"Ollama is offline: cannot connect to {name} ({error.__class__.__name__})")


def _translate(name: str, error: BaseException) -> Exception:
    """aiohttp's failures as the domain's: silent upstream, unreachable upstream, or a broken exchange."""
    if isinstance(error, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
        return _offline(name, error)
    if isinstance(error, asyncio.TimeoutError):
        return UpstreamTimeout("Ollama did not answer within the read timeout")
    return UpstreamError(f"connection to Ollama lost ({error.__class__.__name__})")


class _SilenceWatch:
    """The read timeout while a body is read piece by piece: the longest wait for its next piece.

    aiohttp's own (`sock_read`) re-arms a timer at every read from the socket, a cancel and a
    `call_later` per streamed chunk; this one is a timer per stream that, when it fires, looks at how
    long the reader has been waiting and re-arms for what is left. Time the reader spends elsewhere (its
    client reading slowly) is not upstream silence and does not count, as aiohttp's pauses its timer
    while reading is paused. (aiohttp's timer armed by the response's head still fires if nothing at all
    follows it within the timeout: that is upstream silence too.)
    """

    __slots__ = ("_content", "_handle", "_loop", "_timeout", "_waiting_since")

    def __init__(self, response: aiohttp.ClientResponse, timeout: float | None) -> None:
        self._content = response.content
        self._timeout = timeout or 0.0
        self._loop = asyncio.get_running_loop()
        self._waiting_since: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        connection = response.connection
        if self._timeout and connection is not None and connection.protocol is not None:
            # For this response only: the connection's next request sets its own again.
            connection.protocol.read_timeout = None
            self._handle = self._loop.call_later(self._timeout, self._check)

    def waiting(self) -> None:
        self._waiting_since = self._loop.time()

    def heard(self) -> None:
        self._waiting_since = None

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        since = self._waiting_since
        left = self._timeout if since is None else since + self._timeout - self._loop.time()
        if left > 0:
            self._handle = self._loop.call_later(left, self._check)
            return
        self._handle = None
        self._content.set_exception(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))


class AiohttpUpstreamResponse:
    __slots__ = ("_name", "_read_timeout", "_response", "_watch")

    def __init__(self, response: aiohttp.ClientResponse, name: str, read_timeout: float | None) -> None:
        self._response = response
        self._name = name
        self._read_timeout = read_timeout
        self._watch: _SilenceWatch | None = None

    @property
    def status(self) -> int:
        return self._response.status

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _translate(self._name, error) from error
        finally:
            self._response.release()

    async def lines(self) -> AsyncIterator[bytes]:
        # Split chunks ourselves: aiohttp's line reader caps line length, and a final /api/generate
        # chunk carrying a long `context` can exceed it. Ollama writes one line per chunk: a read that is
        # exactly one whole line goes out as it came, without a copy.
        pending = b""
        content = self._response.content
        watch = self._watch = _SilenceWatch(self._response, self._read_timeout)
        try:
            while True:
                watch.waiting()
                data = await content.readany()
                watch.heard()
                if not data:
                    break
                if not pending and data.find(b"\n") == len(data) - 1:
                    if len(data) > 1:
                        yield data
                    continue
                pending += data
                if b"\n" not in data:
                    continue
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    if line:
                        yield line + b"\n"
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _translate(self._name, error) from error
        finally:
            watch.stop()
        if pending.strip():
            yield pending + b"\n"

    @property
    def content_type(self) -> str:
        return self._response.headers.get("Content-Type", "")

    async def chunks(self) -> AsyncIterator[bytes]:
        # The pieces as they arrive: a pass-through relays them without splitting or re-encoding.
        content = self._response.content
        watch = self._watch = _SilenceWatch(self._response, self._read_timeout)
        try:
            while True:
                watch.waiting()
                data = await content.readany()
                watch.heard()
                if not data:
                    return
                yield data
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _translate(self._name, error) from error
        finally:
            watch.stop()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        # close(), not release(): an unfinished body must drop the connection so Ollama stops generating.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class OllamaHttpBackend:
    def __init__(
        self, base_url: str, connect_timeout: float, read_timeout: float, name: str = "ollama-1"
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self._urls: dict[str, URL] = {}
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            # No connection cap: a thousand concurrent streams need a thousand upstream connections.
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=60)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, auto_decompress=False, read_bufsize=_READ_BUFSIZE
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("OllamaHttpBackend.start() was not awaited")
        return self._session

    def _url(self, path: str) -> URL:
        # Parsed once per path (aiohttp parses the string on every request). The paths posted to are a
        # handful, but a pass-through may post to any (a blob's digest): the table is cleared when full,
        # so those cannot push the inference paths out for good.
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) >= _CACHED_PATHS:
                self._urls.clear()
            url = self._urls[path] = URL(self.base_url + path)
        return url

    async def post(self, path: str, body: bytes, upstream: str | None = None) -> AiohttpUpstreamResponse:
        try:
            response = await lean_post(self.session, self._url(path), body, self._timeout, _READ_BUFSIZE)
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _translate(self.name, error) from error
        return AiohttpUpstreamResponse(response, self.name, self._timeout.sock_read)

    async def request(
        self, method: str, path: str, body: bytes | AsyncIterable[bytes] | None
    ) -> AiohttpUpstreamResponse:
        """Any request, for the pass-through: the Host header is this server's own, never the client's."""
        if method == "POST" and isinstance(body, bytes):
            return await self.post(path, body)
        url = self.base_url + path
        headers = _JSON_HEADERS if isinstance(body, bytes) else _RAW_HEADERS if body is not None else None
        try:
            response = await self.session.request(method, url, data=body, headers=headers)
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _translate(self.name, error) from error
        return AiohttpUpstreamResponse(response, self.name, self._timeout.sock_read)

    async def models(self, timeout: float) -> list[ModelInfo]:
        url = self.base_url + "/api/tags"
        limit = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, self._connect_timeout))
        try:
            async with self.session.get(url, timeout=limit) as response:
                if response.status != 200:
                    raise UpstreamError(f"Ollama answered {response.status} to /api/tags")
                tags = msgspec.json.decode(await response.read(), type=_Tags)
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _translate(self.name, error) from error
        except (msgspec.DecodeError, UnicodeDecodeError) as error:
            raise UpstreamError("Ollama sent an unreadable model list") from error
        return [
            ModelInfo(str(m.get("name") or m.get("model") or "?"), int(m.get("size") or 0))
            for m in tags.models
        ]
