"""The bare ASGI answers of the metered routes: what they send, and how a stream ends; and the middleware
that cancels a request whose client left."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from ollama_gate.entrypoints.asgi_answers import JSON, NDJSON, BodyAnswer, StreamAnswer
from ollama_gate.entrypoints.client_presence import CLIENT_GONE, ClientGone, cancel_on_disconnect

SCOPE: Any = {"type": "http", "method": "POST", "path": "/chat/stream"}


class Client:
    """An ASGI server's side of one request: its body first, then nothing until the client leaves (or the
    answer is complete, as uvicorn does); collects what is sent."""

    def __init__(self, body: bytes = b"{}") -> None:
        self.sent: list[dict[str, Any]] = []
        self._body: bytes | None = body
        self._left = asyncio.Event()
        self.receives = 0

    async def receive(self) -> Any:
        self.receives += 1
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self._left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Any) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self._left.set()

    def leave(self) -> None:
        self._left.set()

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


class Ends:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def test_an_upstream_content_type_goes_out_as_it_came() -> None:
    client = Client()
    await BodyAnswer(b"oops", "text/plain; charset=utf-8", status=502)(SCOPE, client.receive, client.send)
    start = client.sent[0]
    assert start["status"] == 502
    assert start["headers"] == [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"4")]


async def test_a_json_answer_sends_its_status_headers_and_whole_body() -> None:
    client = Client()
    await BodyAnswer(b'{"ok":true}', JSON, [(b"x-ratelimit-remaining", b"9")], status=200)(
        SCOPE, client.receive, client.send
    )
    start, body = client.sent
    assert start["status"] == 200
    assert (b"content-type", b"application/json") in start["headers"]
    assert (b"content-length", b"11") in start["headers"]
    assert (b"x-ratelimit-remaining", b"9") in start["headers"]
    assert body == {"type": "http.response.body", "body": b'{"ok":true}', "more_body": False}


async def test_a_stream_sends_every_line_then_ends_once() -> None:
    async def lines() -> AsyncIterator[bytes]:
        for number in range(3):
            yield b'{"n":%d}\n' % number

    client, ends = Client(), Ends()
    await StreamAnswer(lines(), NDJSON, [(b"ratelimit", b"r=1")], ends)(SCOPE, client.receive, client.send)
    start = client.sent[0]
    assert start["status"] == 200
    assert (b"content-type", b"application/x-ndjson") in start["headers"]
    assert (b"ratelimit", b"r=1") in start["headers"]
    assert client.body == b'{"n":0}\n{"n":1}\n{"n":2}\n'
    assert client.sent[-1]["more_body"] is False
    assert ends.count == 1


async def run(app: Any, client: Client, scope: Any = SCOPE) -> None:
    await app(scope, client.receive, client.send)


def read_body_then(answer: Any) -> Callable[[Any, Any, Any], Coroutine[Any, Any, None]]:
    """An app that reads its request body (as a handler does), then answers with `answer`."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await answer(scope, receive, send)

    return app


async def test_a_client_that_leaves_cancels_the_lines_and_the_stream_ends_quietly() -> None:
    seen: list[str] = []
    first_sent = asyncio.Event()

    async def lines() -> AsyncIterator[bytes]:
        try:
            yield b"first\n"
            first_sent.set()
            await asyncio.sleep(30)
            yield b"never\n"
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    client, ends = Client(), Ends()
    app = cancel_on_disconnect(read_body_then(StreamAnswer(lines(), NDJSON, (), ends)))
    streaming = asyncio.create_task(run(app, client))
    await first_sent.wait()
    client.leave()
    await asyncio.wait_for(streaming, 5)  # returns: no CancelledError escapes to the server
    assert seen == ["cancelled"]
    assert client.body == b"first\n"
    assert ends.count == 1
    assert not streaming.cancelled()


async def test_a_server_cancelling_the_request_still_cancels_it_and_ends_the_stream() -> None:
    started = asyncio.Event()

    async def lines() -> AsyncIterator[bytes]:
        started.set()
        await asyncio.sleep(30)
        yield b"never\n"

    client, ends = Client(), Ends()
    streaming = asyncio.create_task(
        StreamAnswer(lines(), NDJSON, (), ends)(SCOPE, client.receive, client.send)
    )
    await started.wait()
    streaming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await streaming
    assert ends.count == 1


async def test_a_client_that_leaves_while_the_handler_waits_cancels_the_handler_at_once() -> None:
    """The handler has read the body and waits (for Ollama's status line, for a GPU slot): no byte of an
    answer has been sent, and still the client's leaving reaches it."""
    waiting, seen = asyncio.Event(), []

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["more_body"] is False
        waiting.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    client = Client()
    request = asyncio.create_task(run(cancel_on_disconnect(handler), client))
    await waiting.wait()
    client.leave()
    await asyncio.wait_for(request, 5)  # ends quietly: nobody is left to answer
    assert seen == ["cancelled"]
    assert client.sent == []
    assert not request.cancelled()


async def test_the_end_of_a_complete_answer_is_not_a_client_leaving() -> None:
    """uvicorn reports `http.disconnect` once an answer is complete; that must not cancel what the app
    still does after its last byte (its cleanup, the usage row)."""
    after_answer: list[str] = []

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await BodyAnswer(b"{}", JSON)(scope, receive, send)
        await asyncio.sleep(0.01)  # the listener has seen the server's end-of-answer disconnect by now
        after_answer.append("cleanup done")

    client = Client()
    await asyncio.wait_for(run(cancel_on_disconnect(handler), client), 5)
    assert after_answer == ["cleanup done"]


async def test_an_app_listening_after_its_body_hears_of_the_disconnect() -> None:
    """A listener of the app's own (Litestar's `Stream` runs one) gets `http.disconnect` too, without
    reading the socket itself: the one listener owns the connection's events."""
    heard: list[str] = []

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        own_listener = asyncio.create_task(receive())
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            heard.append((await own_listener)["type"])
            raise

    client = Client()
    request = asyncio.create_task(run(cancel_on_disconnect(handler), client))
    await asyncio.sleep(0.01)
    client.leave()
    await asyncio.wait_for(request, 5)
    assert heard == ["http.disconnect"]
    assert client.receives == 2  # the body, then the one listener's wait: nobody else read the socket


async def test_under_the_gateways_server_the_client_gone_signal_cancels_without_a_listener() -> None:
    """The gateway's server fires the request's ClientGone when its connection closes early: the task is
    cancelled and ends quietly, and nothing ever read the connection's events but the handler."""
    waiting, seen = asyncio.Event(), []

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        waiting.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    gone = ClientGone()
    client = Client()
    scope = {**SCOPE, CLIENT_GONE: gone}
    request = asyncio.create_task(run(cancel_on_disconnect(handler), client, scope))
    await waiting.wait()
    gone.fire()
    gone.fire()  # at most once
    await asyncio.wait_for(request, 5)
    assert seen == ["cancelled"]
    assert not request.cancelled()
    assert client.receives == 1  # the body only: no listener
    assert gone.cancels is None  # the request let go of its task


async def test_under_the_gateways_server_a_cancellation_of_its_own_still_propagates() -> None:
    """A cancellation that is not the client leaving (the shutdown deadline) is not swallowed."""
    started = asyncio.Event()

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        started.set()
        await asyncio.sleep(30)

    client = Client()
    scope = {**SCOPE, CLIENT_GONE: ClientGone()}
    request = asyncio.create_task(run(cancel_on_disconnect(handler), client, scope))
    await started.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
