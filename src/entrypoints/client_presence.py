"""A client that hangs up cancels its request at once, from the moment its body is in.

Litestar cancels a handler only once it is sending a stream. A handler still waiting, for Ollama's status
line (a cold model load, a non-streamed answer) or for a free GPU slot, would never hear of it, and the
GPU would keep working for nobody. This middleware listens to ASGI `receive()` for `http.disconnect` as
soon as the request body has been read, and cancels the request's task when it comes: the upstream
request is aborted (Ollama stops), the services record the request as cancelled, and the answer (which
nobody would read) is dropped quietly.

One listener task per request covers the whole request, the handler and the streamed answer alike (they
run in one task); the answers themselves need no listener of their own.

Under the gateway's own server (entrypoints/http_server.py) there is no listener at all: the server hands
each request a `ClientGone` signal in its scope (under `CLIENT_GONE`) and fires it from the connection's
`connection_lost` while the response is incomplete, so the request's task is cancelled with no task, no
wrapped `receive` or `send` and no wake-up per request (the listener cost about a tenth of a /chat
request's CPU). The listener remains for any other ASGI server.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from litestar.types import Message, Receive, Scope, Send

from ollama_gate.entrypoints.inline_middleware import InlineMiddleware

_DISCONNECT: Message = {"type": "http.disconnect"}
# The scope key under which the gateway's server offers a `ClientGone` per request (a namespaced key of
# the scope itself: an `extensions` dict made only for it would cost every request a dict).
CLIENT_GONE = "ollama_gate.client_gone"


class ClientGone:
    """Fired by the server, at most once, when the request's connection closes before its response is
    complete; `cancels` is the task to cancel then (None: nothing). The task itself rather than its bound
    `cancel`: a request waiting for the GPU would keep that method object for as long as it waits."""

    __slots__ = ("cancels", "fired")

    def __init__(self) -> None:
        self.fired = False
        self.cancels: asyncio.Task[object] | None = None

    def fire(self) -> None:
        if not self.fired:
            self.fired = True
            if self.cancels is not None:
                self.cancels.cancel()


class _Presence:
    """The watch over one request: its receive and send, wrapped."""

    __slots__ = ("_answered", "_gone", "_listener", "_receive", "_send", "_task", "left")

    def __init__(self, receive: Receive, send: Send, task: asyncio.Task[object]) -> None:
        self._receive = receive
        self._send = send
        self._task = task
        self._listener: asyncio.Task[None] | None = None
        self._gone: asyncio.Event | None = None
        self._answered = False
        self.left = False

    async def receive(self) -> Message:
        if self._listener is not None:
            # The body is in and the listener owns the connection's events: wait for its news.
            if self._gone is None:
                self._gone = asyncio.Event()
                if self.left:
                    self._gone.set()
            await self._gone.wait()
            return _DISCONNECT
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.left = True
        elif not message.get("more_body", False):
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        return message  # type: ignore[return-value]

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            # Answered: a disconnect after this (the server reports one once the answer is complete)
            # is the normal end of the exchange, not a client leaving.
            self._answered = True
        await self._send(message)

    async def _listen(self) -> None:
        message = await self._receive()
        while message["type"] != "http.disconnect":  # a pipelined request's bytes: not ours
            message = await self._receive()
        if self._answered:
            return
        self.left = True
        if self._gone is not None:
            self._gone.set()
        self._task.cancel()

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()


class CancelOnDisconnect(InlineMiddleware):
    """Route middleware for the paths that wait on Ollama (inference, model management)."""

    def enter(self, scope: Scope, receive: Receive, send: Send) -> tuple[Receive, Send, Any]:
        task = asyncio.current_task()
        assert task is not None
        gone = cast(dict[str, object], scope).get(CLIENT_GONE)
        if isinstance(gone, ClientGone):
            # Under the gateway's server: the task is cancelled when `gone` fires.
            gone.cancels = task
            return receive, send, gone
        presence = _Presence(receive, send, task)
        return presence.receive, presence.send, presence  # type: ignore[return-value]

    def exit(self, scope: Scope, token: Any, error: BaseException | None) -> bool:
        watch: ClientGone | _Presence = token
        if isinstance(watch, ClientGone):
            watch.cancels = None
            left = watch.fired
        else:
            watch.stop()
            left = watch.left
        if isinstance(error, asyncio.CancelledError) and left:
            # Our own cancellation, because the client left: nobody is waiting for an answer.
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            return True
        return False


cancel_on_disconnect = CancelOnDisconnect()
