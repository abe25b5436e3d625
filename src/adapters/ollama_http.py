"""Ollama over HTTP with aiohttp: one session per process, a keep-alive pool, explicit timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Protocol

import aiohttp
import msgspec
from aiohttp.connector import Connection
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy
from yarl import URL

from ollama_gate.adapters.aiohttp_post import JSON_HEADERS, PostTarget, post
from ollama_gate.domain.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from ollama_gate.domain.status import ModelInfo

_RAW_HEADERS = {"Content-Type": "application/octet-stream"}
_READ_BUFSIZE = 2**18
_CACHED_PATHS = 64


class _Answer(Protocol):
    """What the adapter reads of an answer: a `PostResponse` (`post`, adapters/aiohttp_post.py) or, for
    the pass-through's other requests, the session's `ClientResponse`."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def content(self) -> StreamReader: ...

    @property
    def connection(self) -> Connection | None: ...

    async def read(self) -> bytes: ...

    def release(self) -> object: ...

    def close(self) -> None: ...


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

    def __init__(self, response: _Answer, timeout: float | None) -> None:
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

    def __init__(self, response: _Answer, name: str, read_timeout: float | None) -> None:
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
        self._targets: dict[str, PostTarget] = {}
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
        self._targets.clear()  # each holds its session
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("OllamaHttpBackend.start() was not awaited")
        return self._session

    def _target(self, path: str) -> PostTarget:
        # Prepared once per path (the session parses the URL and builds the head on every request). The
        # paths posted to are a handful, but a pass-through may post to any (a blob's digest): the table
        # is cleared when full, so those cannot push the inference paths out for good.
        target = self._targets.get(path)
        if target is None:
            if len(self._targets) >= _CACHED_PATHS:
                self._targets.clear()
            target = self._targets[path] = PostTarget(URL(self.base_url + path), self.session)
        return target

    async def post(self, path: str, body: bytes, upstream: str | None = None) -> AiohttpUpstreamResponse:
        session = self.session
        if session.closed or session.connector is None:
            raise RuntimeError("Session is closed")
        try:
            response = await post(session.connector, self._target(path), body, self._timeout, _READ_BUFSIZE)
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
        headers = JSON_HEADERS if isinstance(body, bytes) else _RAW_HEADERS if body is not None else None
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
