"""The answers of the metered routes as bare ASGI apps that a handler returns.

Litestar's `Response` and `Stream` cost a measurable share of a request on the hot path: the response is
rebuilt from a dict of headers, and every `Stream` runs an anyio task group to listen for a disconnect.
These send the same bytes with the headers encoded once, and listen for a disconnect with one plain task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

JSON_CONTENT_TYPE = (b"content-type", b"application/json")
NDJSON_CONTENT_TYPE = (b"content-type", b"application/x-ndjson")

EncodedHeaders = list[tuple[bytes, bytes]]


def encode_headers(headers: Mapping[str, str]) -> EncodedHeaders:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


class JsonAnswer:
    """A complete JSON body with a status and extra headers."""

    __slots__ = ("_body", "_headers", "_status")

    def __init__(self, body: bytes, headers: Mapping[str, str], status: int = 200) -> None:
        self._body = body
        self._status = status
        self._headers = [
            JSON_CONTENT_TYPE,
            (b"content-length", str(len(body)).encode()),
            *encode_headers(headers),
        ]

    async def __call__(self, _scope: Scope, _receive: Receive, send: Send) -> None:
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": self._status,
            "headers": self._headers,
        }
        await send(start)
        body: HTTPResponseBodyEvent = {"type": "http.response.body", "body": self._body, "more_body": False}
        await send(body)


class NdjsonStream:
    """A 200 NDJSON stream of `lines`, cut short when the client disconnects; `on_end` runs however it ends.

    A client that leaves cancels the iteration (the lines generator sees `CancelledError`, as with
    Litestar's `Stream`), and the answer then ends quietly: there is nobody left to answer.
    """

    __slots__ = ("_headers", "_lines", "_on_end")

    def __init__(
        self,
        lines: AsyncIterator[bytes],
        headers: Mapping[str, str],
        on_end: Callable[[], Awaitable[None]],
    ) -> None:
        self._lines = lines
        self._headers = [NDJSON_CONTENT_TYPE, *encode_headers(headers)]
        self._on_end = on_end

    async def __call__(self, _scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        left = asyncio.Event()
        listener = asyncio.create_task(_cancel_on_disconnect(receive, streaming, left))
        try:
            await self._send_all(send)
        except asyncio.CancelledError:
            if not left.is_set():
                raise
            # Our own cancellation, because the client left: nothing to propagate.
            streaming.uncancel()
        finally:
            listener.cancel()
            await self._on_end()

    async def _send_all(self, send: Send) -> None:
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 200,
            "headers": self._headers,
        }
        await send(start)
        async for line in self._lines:
            chunk: HTTPResponseBodyEvent = {"type": "http.response.body", "body": line, "more_body": True}
            await send(chunk)
        end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(end)


async def _cancel_on_disconnect(receive: Receive, streaming: asyncio.Task[None], left: asyncio.Event) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                left.set()
                streaming.cancel()
                return
