"""One POST to Ollama on aiohttp's connection pool and response parser, without its request and response
objects.

A session's `post` builds a `ClientRequest` and a `ClientResponse` per call, and around them cookies,
redirects, auth, proxies, traces, middleware and a body-writer task. A POST from this gateway to Ollama
needs none of these. Counted with callgrind against the bench's fake upstream (1,000 round trips, post,
read and release), a round trip through the session took about 344,000 instructions. Through the request
and response objects alone it took 302,000, and through this module 180,000.

What stays aiohttp's: the connector (its pool, keep-alive, connect timeout and DNS cache), the protocol
and its C response parser, the read timeout (`sock_read`) and the body's `StreamReader`. The bytes on the
wire are the session's (tests/integration/test_ollama_http_post.py compares them) and so are the
exceptions. A request larger than the socket's buffers is read for its answer while the rest of it goes
out, as the session's body-writer task allows. Two differences, both on purpose: no cookie is kept (one session serves every caller, so an
upstream's cookie must never reach another one), and a redirect is answered, not followed (a gateway
relays what its upstream says).
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import hdrs
from aiohttp.client_proto import ResponseHandler
from aiohttp.connector import Connection
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy
from yarl import URL

JSON_HEADERS = {"Content-Type": "application/json"}


def _raised_as_is(error: OSError) -> bool:
    """Whether the session lets this OSError through: aiohttp's own errors and timeouts; it raises any
    other as `ClientOSError`."""
    return isinstance(error, aiohttp.ClientError) or (error.errno is None and isinstance(error, TimeoutError))


class PostTarget:
    """One upstream URL, prepared once: what the connector needs to find or open a connection to it, and
    the request's head as the session writes it, but for the body's length."""

    __slots__ = ("_after_length", "_before_length", "request", "url")

    def __init__(self, url: URL, session: aiohttp.ClientSession) -> None:
        self.url = url
        # Never sent: the connector reads its connection key, address and TLS settings, nothing else.
        self.request = aiohttp.ClientRequest(
            "POST", url, headers=JSON_HEADERS, data=b"", loop=asyncio.get_running_loop(), session=session
        )
        headers = self.request.headers.copy()
        connector = session.connector
        if connector is not None and connector.force_close:
            headers[hdrs.CONNECTION] = "close"  # as the request's `send` adds it
        head = f"POST {url.raw_path_qs} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers.items())
        # The prototype's body is empty: its length is the one part that changes per request.
        length = f"\r\n{hdrs.CONTENT_LENGTH}: "
        before, found, after = (head + "\r\n").partition(length + "0\r\n")
        assert found, "aiohttp gives a bytes body its Content-Length"
        self._before_length, self._after_length = (before + length).encode(), ("\r\n" + after).encode()

    def message(self, body: bytes) -> bytes:
        """The whole request, head and body, in one piece (one write, as the session coalesces them)."""
        return self._before_length + str(len(body)).encode() + self._after_length + body


class PostResponse:
    """The answer to one POST once its head is in: the body is aiohttp's stream, and the connection goes
    back to the pool when released after the whole body, or is closed."""

    __slots__ = ("connection", "content", "headers", "status")

    def __init__(
        self, status: int, headers: CIMultiDictProxy[str], content: StreamReader, connection: Connection
    ) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self.connection: Connection | None = connection

    async def read(self) -> bytes:
        """The whole body; a failed read closes the connection."""
        try:
            return await self.content.read()
        except BaseException:
            self.close()
            raise

    def release(self) -> None:
        """Give the connection back: to the pool when the body was read whole, else it is closed."""
        if self.connection is not None:
            if not self.content.at_eof():
                self._end_reading()
            self.connection.release()
            self.connection = None

    def close(self) -> None:
        """Close the connection, whatever was read: Ollama stops a generation whose client is gone."""
        if self.connection is not None:
            self._end_reading()
            self.connection.close()
            self.connection = None

    def _end_reading(self) -> None:
        # As `ClientResponse` does: a reader still waiting on the body fails rather than waits for ever
        # (a closed protocol no longer feeds the stream, not even its end).
        if self.content.exception() is None:
            self.content.set_exception(aiohttp.ClientConnectionError("Connection closed"))


async def post(
    connector: aiohttp.BaseConnector,
    target: PostTarget,
    body: bytes,
    timeout: aiohttp.ClientTimeout,
    read_bufsize: int,
) -> PostResponse:
    """POST `body` as JSON to `target` on a pooled connection; returns once the answer's head is in.

    Raises what the session's `post` raises: `ConnectionTimeoutError` or a `ClientConnectorError` when no
    connection can be made, `ClientOSError` or a `ClientConnectionError` when it breaks,
    `SocketTimeoutError` when Ollama stays silent for `timeout.sock_read`, and `ClientResponseError` for
    an answer that is not HTTP.
    """
    try:
        connection = await connector.connect(target.request, [], timeout)
    except TimeoutError as error:
        raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {target.url}") from error
    except OSError as error:
        if _raised_as_is(error):
            raise
        raise aiohttp.ClientOSError(*error.args) from error
    protocol = connection.protocol
    assert protocol is not None, "a connection from the pool has its protocol"
    try:
        message, payload = await _exchange(protocol, target, body, timeout, read_bufsize)
    except BaseException as error:
        # Whatever happened, Ollama must not keep generating for nobody: the connection ends here.
        connection.close()
        if isinstance(error, OSError) and not _raised_as_is(error):
            raise aiohttp.ClientOSError(*error.args) from error
        raise
    return PostResponse(message.code, message.headers, payload, connection)


async def _exchange(
    protocol: ResponseHandler,
    target: PostTarget,
    body: bytes,
    timeout: aiohttp.ClientTimeout,
    read_bufsize: int,
) -> tuple[aiohttp.http.RawResponseMessage, StreamReader]:
    # The parameters the session sets for every response it reads.
    protocol.set_response_params(
        read_until_eof=True, auto_decompress=False, read_timeout=timeout.sock_read, read_bufsize=read_bufsize
    )
    transport = protocol.transport
    if transport is None or transport.is_closing():
        raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
    transport.write(target.message(body))
    if not protocol.writing_paused:
        protocol.start_timeout()
        return await _answer(protocol, target)
    # A request too large for the socket's buffers: as the session does, the answer is read while the rest
    # goes out (Ollama may answer early, a 413 or a 404, and stop reading), and the read timeout starts
    # once the request is out, not while it waits to be sent.
    sending = asyncio.ensure_future(_send_rest(protocol))
    try:
        return await _answer(protocol, target)
    finally:
        if not sending.done():
            sending.cancel()
            # Answered before the request was out: the connection carries unsent bytes and cannot serve
            # another request.
            protocol.force_close()


async def _send_rest(protocol: ResponseHandler) -> None:
    try:
        await StreamWriter(protocol, asyncio.get_running_loop()).drain()
    except OSError:
        # The connection is lost: the protocol tells the reader (with an answer already in, that answer).
        return
    protocol.start_timeout()


async def _answer(
    protocol: ResponseHandler, target: PostTarget
) -> tuple[aiohttp.http.RawResponseMessage, StreamReader]:
    while True:
        try:
            message, payload = await protocol.read()
        except HttpProcessingError as error:
            raise aiohttp.ClientResponseError(
                target.request.request_info,
                (),
                status=error.code,
                message=error.message,
                headers=error.headers,
            ) from error
        # An informational answer (100 Continue) precedes the real one; 101 is an answer of its own.
        if not 100 <= message.code <= 199 or message.code == 101:
            return message, payload
