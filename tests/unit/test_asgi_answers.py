"""The bare ASGI answers of the metered routes: what they send, and how a stream ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ollama_gate.entrypoints.asgi_answers import JSON, NDJSON, BodyAnswer, StreamAnswer

SCOPE: Any = {"type": "http", "method": "POST", "path": "/chat/stream"}


class Client:
    """An ASGI server's side of one request: collects what is sent, and can say the client left."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._left = asyncio.Event()

    async def receive(self) -> Any:
        await self._left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Any) -> None:
        self.sent.append(message)

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
    await BodyAnswer(b"oops", "text/plain; charset=utf-8", None, status=502)(
        SCOPE, client.receive, client.send
    )
    start = client.sent[0]
    assert start["status"] == 502
    assert start["headers"] == [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"4")]


async def test_a_json_answer_sends_its_status_headers_and_whole_body() -> None:
    client = Client()
    await BodyAnswer(b'{"ok":true}', JSON, {"X-RateLimit-Remaining": "9"}, status=200)(
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
    await StreamAnswer(lines(), NDJSON, {"RateLimit": "r=1"}, ends)(SCOPE, client.receive, client.send)
    start = client.sent[0]
    assert start["status"] == 200
    assert (b"content-type", b"application/x-ndjson") in start["headers"]
    assert (b"ratelimit", b"r=1") in start["headers"]
    assert client.body == b'{"n":0}\n{"n":1}\n{"n":2}\n'
    assert client.sent[-1]["more_body"] is False
    assert ends.count == 1


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
    streaming = asyncio.create_task(
        StreamAnswer(lines(), NDJSON, {}, ends)(SCOPE, client.receive, client.send)
    )
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
        StreamAnswer(lines(), NDJSON, {}, ends)(SCOPE, client.receive, client.send)
    )
    await started.wait()
    streaming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await streaming
    assert ends.count == 1
