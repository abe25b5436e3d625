"""The answers of the forwarding routes as bare ASGI apps that a handler returns.

Litestar's `Response` and `Stream` cost a measurable share of a request on the hot path: the response is
rebuilt from a dict of headers, and every `Stream` runs an anyio task group to listen for a disconnect.
These send the same bytes with the headers encoded once; a client that leaves is noticed by the route's
`cancel_on_disconnect` middleware, which cancels the whole request (handler and answer) at once.
Content types go out as given: an upstream's `text/event-stream; charset=utf-8` stays what it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

JSON = "application/json"
NDJSON = "application/x-ndjson"

Header = tuple[bytes, bytes]  # as ASGI sends it: the name in lower case, both encoded
EncodedHeaders = list[Header]


def _head(content_type: str, headers: Sequence[Header]) -> EncodedHeaders:
    """The response's headers; no content type when it is "" (an empty body that is no document)."""
    head = [(b"content-type", content_type.encode("latin-1"))] if content_type else []
    head += headers
    return head


class Answer:
    """What a forwarding handler returns: Litestar sends an async-callable result as the ASGI app itself."""

    __slots__ = ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class BodyAnswer(Answer):
    """A whole body with its status, content type and extra headers (encoded, their names in lower case)."""

    __slots__ = ("_body", "_headers", "_status")

    def __init__(
        self, body: bytes, content_type: str, headers: Sequence[Header] = (), status: int = 200
    ) -> None:
        self._body = body
        self._status = status
        self._headers = _head(content_type, headers)
        self._headers.append((b"content-length", str(len(body)).encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": self._status,
            "headers": self._headers,
        }
        await send(start)
        body: HTTPResponseBodyEvent = {"type": "http.response.body", "body": self._body, "more_body": False}
        await send(body)


class StreamAnswer(Answer):
    """A 200 stream of `chunks`; `on_end` runs however it ends.

    A client that leaves cancels the request's task (see `client_presence`): the chunks generator sees
    `CancelledError`, as with Litestar's `Stream`. `on_end` is synchronous so that it completes even while
    the task is being cancelled: it is where a relay that was dropped before its first chunk closes its
    upstream and records its usage.
    """

    __slots__ = ("_chunks", "_headers", "_on_end")

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        content_type: str,
        headers: Sequence[Header],
        on_end: Callable[[], None],
    ) -> None:
        self._chunks = chunks
        self._headers = _head(content_type, headers)
        self._on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._send_all(send)
        finally:
            self._on_end()

    async def _send_all(self, send: Send) -> None:
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 200,
            "headers": self._headers,
        }
        await send(start)
        async for data in self._chunks:
            chunk: HTTPResponseBodyEvent = {"type": "http.response.body", "body": data, "more_body": True}
            await send(chunk)
        end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(end)
