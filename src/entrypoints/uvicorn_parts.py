"""Smaller or cheaper stand-ins for the parts uvicorn's httptools protocol makes for every connection and
request.

A request waiting for the GPU keeps its connection, and everything uvicorn made for it, for as long as it
waits: thousands of them hold these parts at once. uvicorn's own versions each carry a `collections.deque`
(624 bytes, allocated whether or not anything is ever queued in it); these behave the same for the
operations uvicorn 0.54 uses (see `BoundedHttpToolsProtocol`, which puts them in place). `GatewayCycle`
is uvicorn's request cycle with cheaper writes of a response.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Generator
from typing import Any, cast

from uvicorn._types import ASGISendEvent, HTTPResponseBodyEvent, HTTPResponseStartEvent
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)

_base_send = RequestResponseCycle.send


def _matched_by(pattern: re.Pattern[bytes]) -> bytes:
    """The bytes a one-byte class such as uvicorn's header patterns matches, for `bytes.translate`."""
    return bytes(byte for byte in range(256) if pattern.fullmatch(bytes([byte])))


# The bytes uvicorn refuses in a header name and in a value. A joined string keeps its length through
# `translate(None, these)` iff it holds none: one pass of C over a table, where re tests each byte against
# its class (10,000 of a /chat answer's 1,027,000 instructions, callgrind).
_NAME_REFUSED = _matched_by(HEADER_RE)
_VALUE_REFUSED = _matched_by(HEADER_VALUE_RE)


class LeanEvent:
    """asyncio.Event as uvicorn's request cycle and flow control use it (set, clear, is_set, wait), without
    the waiter deque asyncio's allocates up front: 624 bytes each, two per connection, while hardly any
    connection ever has a waiter (only a request reading its body, or a response held by a slow reader)."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters
        waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            waiters.remove(waiter)
            if not waiters and self._waiters is waiters:
                self._waiters = None


class Pipeline(list[tuple[RequestResponseCycle, Any]]):
    """The pipelined requests waiting their turn, as uvicorn uses its deque (`appendleft`, `pop`, truth):
    an empty list is 56 bytes, an empty deque 624, on every connection."""

    __slots__ = ()

    def appendleft(self, item: tuple[RequestResponseCycle, Any]) -> None:
        self.insert(0, item)


class LeanFlowControl(FlowControl):
    """uvicorn's flow control with the lean event (the connection's writes are allowed from the start)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__(transport)
        self._is_writable_event = cast(asyncio.Event, LeanEvent(True))


class _Written:
    """What `GatewayCycle.send` answers for a head it wrote at once: awaiting it returns at once."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]


_WRITTEN = _Written()


class GatewayCycle(RequestResponseCycle):
    """uvicorn's request-response cycle, with the response's head and body written as its `send` is called:
    no coroutine per message (a stream sends one per chunk), and the head's names and values checked by
    one pass each over all of them (uvicorn searches twice per header: 36 searches for a /chat answer,
    22,600 of its 1,009,000 instructions in callgrind). What must wait (writing paused), what a
    disconnected client is sent, a head with uvicorn's access log on and every message out of order go
    through uvicorn's own `send`."""

    __slots__ = ()

    def send(self, message: ASGISendEvent) -> Awaitable[None]:  # type: ignore[override]
        if self.disconnected or self.flow.write_paused:
            return _base_send(self, message)
        if not self.response_started:
            if message["type"] != "http.response.start" or self.access_log:
                return _base_send(self, message)
            self._write_head(message)
        elif message["type"] == "http.response.body" and not self.response_complete:
            self._write_body(message)
        else:
            return _base_send(self, message)
        return _WRITTEN

    def _write_head(self, message: HTTPResponseStartEvent) -> None:
        """uvicorn's head, as it writes it (the same checks, in the same order of effects)."""
        self.response_started = True
        self.waiting_for_100_continue = False
        status_code = message["status"]
        headers = self.default_headers + list(message.get("headers", []))
        # A name (or value) is valid iff their concatenation has none of the refused bytes.
        names = b"".join([name for name, _ in headers])
        if len(names.translate(None, _NAME_REFUSED)) != len(names):
            raise RuntimeError("Invalid HTTP header name.")
        values = b"".join([value for _, value in headers])
        if len(values.translate(None, _VALUE_REFUSED)) != len(values):
            raise RuntimeError("Invalid HTTP header value.")
        content = [STATUS_LINE[status_code]]
        has_connection_close = False
        for name, value in headers:
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
                if b"close" in connection:
                    self.keep_alive = False
                    has_connection_close = True
            content.extend([name, b": ", value, b"\r\n"])
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status_code not in (204, 304):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))

    def _write_body(self, message: HTTPResponseBodyEvent) -> None:
        """uvicorn's body, as it writes it (the same checks, the same end of the response)."""
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
        elif self.chunked_encoding:
            content = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
            if not more_body:
                content.append(b"0\r\n\r\n")
            self.transport.write(b"".join(content))
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            self.transport.write(body)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()
