"""The HTTP server: uvicorn (httptools + uvloop) with the limits a server on the internet needs, and a
shutdown with a deadline.

uvicorn offers none of these by settings for its httptools protocol: it buffers a request head of any size
(httptools accumulates a header value in memory until it ends), gives a connection forever to finish its
head or its body, accepts connections until file descriptors run out, and on SIGTERM waits for in-flight
requests as long as they take (a request hung at Ollama holds the process for the whole read timeout).
Its force-exit (a second SIGINT only) skips the app's lifespan shutdown, where the usage writer flushes.

So this module holds:
- `BoundedHttpToolsProtocol`: uvicorn's httptools protocol with a bound on the request head, deadlines for
  the head and for silence within a body, keep-alive expiry, and a ceiling on connections;
- `GatewayServer`: uvicorn's server with the shutdown deadline, a second signal that stops at once, and a
  lifespan shutdown that always runs;
- `GatewaySupervisor`: uvicorn's `--workers` supervisor, whose workers are `GatewayServer`s;
- `serve()`, which the CLI calls, and `raise_open_file_limit()`.

Everything on the request path stays as cheap as stock uvicorn: per request the same one timer (armed when
a response ends, as uvicorn's keep-alive timer is), a few integer updates per read, nothing per response
chunk. Body timers exist only for bodies that span several reads, and are re-armed lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import FrameType, MappingProxyType
from typing import Any, ClassVar, cast

import httptools
import msgspec
from uvicorn import Config, Server
from uvicorn._types import ASGIVersions
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import HANDLED_SIGNALS, ServerState
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from ollama_gate.entrypoints.client_presence import CLIENT_GONE, ClientGone
from ollama_gate.entrypoints.coalescing_transport import CoalescingTransport
from ollama_gate.entrypoints.litestar_entry import entry_of
from ollama_gate.entrypoints.uvicorn_parts import GatewayCycle, LeanEvent, LeanFlowControl, Pipeline

log = logging.getLogger(__name__)

# The base class's callbacks, called directly on the per-read and per-request path: on Python 3.11 each
# `super()` builds a proxy object, and these run for every read and every request.
_base_data_received = HttpToolsProtocol.data_received
_base_on_body = HttpToolsProtocol.on_body
_base_on_message_complete = HttpToolsProtocol.on_message_complete

# A connection that is being refused keeps draining what the client still sends for this long, so that
# the client reads the answer instead of a reset (closing a socket with unread input resets it).
LINGER_SECONDS = 2.0
# Requests cancelled at the shutdown deadline get this long to run their cleanup (record their usage row,
# close their upstream request) before the lifespan shutdown begins.
CANCEL_GRACE_SECONDS = 5.0
# How long the supervisor waits for its workers beyond the shutdown deadline (their cancellation grace and
# usage flush) before it kills what is left.
WORKER_STOP_GRACE_SECONDS = 20.0
# File descriptors the process needs besides client connections: listening socket, database, Redis,
# upstream connections to Ollama, log files.
RESERVED_DESCRIPTORS = 256
# Timers are re-armed for the time that is left; less than this counts as none.
TIMER_SLACK = 0.01
# Addresses shared by the connections that name them (see `connection_made`); clients' hosts are
# forgotten past this many (any address may connect).
_known_addresses: dict[tuple[str, int | None], tuple[str, int | None]] = {}
_known_hosts: dict[str, str] = {}
_KNOWN_HOSTS_KEPT = 4096
# Lower-cased header names, one object per name however many requests carry it (a waiting request keeps
# its headers: 45 bytes a name); names past this many are lowered per request, as uvicorn does.
_known_header_names: dict[bytes, bytes] = {}
_HEADER_NAMES_KEPT = 256
# The scope's `asgi` entry, one read-only mapping for every request (uvicorn makes a dict each, 184 bytes).
_ASGI_ENTRIES = {
    version: cast(ASGIVersions, MappingProxyType({"version": version, "spec_version": "2.3"}))
    for version in ("2.0", "3.0")
}


@dataclass(frozen=True)
class HttpLimits:
    """The bounds of the HTTP layer (OLLAMA_GATE_* settings). Plain values: the config carrying them is
    pickled into every worker process."""

    max_header_bytes: int = 65536
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_connections: int = 4096
    shutdown_timeout: float = 30.0


class GatewayConfig(Config):
    """uvicorn's Config with the gateway's protocol and limits.

    `proxy_headers` is always off: uvicorn's proxy-header middleware trusts 127.0.0.1 by default, so a
    loopback caller could pass an `X-Forwarded-For` of its choosing; the gateway's own trusted-proxy rule
    is the only one that reads forwarding headers. Keep-alive expiry and the graceful shutdown are done by
    `BoundedHttpToolsProtocol` and `GatewayServer` from `limits`, not by uvicorn's own options.
    """

    def __init__(self, app: Any, limits: HttpLimits, **options: Any) -> None:
        super().__init__(app, http=BoundedHttpToolsProtocol, proxy_headers=False, **options)
        self.limits = limits

    def load(self) -> None:
        super().load()
        # uvicorn has decided the interface (ASGI 3) by now, from Litestar's own coroutine `__call__`.
        self.loaded_app = entry_of(self.loaded_app)


def _json_answer(server_state: ServerState, status: int, detail: str, extra_headers: bytes = b"") -> bytes:
    """A complete `connection: close` answer written by the protocol itself (no app involved)."""
    body = msgspec.json.encode({"detail": detail})
    parts = [STATUS_LINE[status]]
    for name, value in server_state.default_headers:
        parts += [name, b": ", value, b"\r\n"]
    parts += [
        b"content-type: application/json\r\ncontent-length: ",
        str(len(body)).encode(),
        b"\r\n",
        extra_headers,
        b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(parts)


class _EveryFewSeconds:
    """Counts events and says when to log them: at most once per `interval` (a flood is one line)."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._logged_at = -interval
        self.unlogged = 0

    def due(self) -> bool:
        self.unlogged += 1
        now = time.monotonic()
        if now - self._logged_at < self._interval:
            return False
        self._logged_at = now
        return True


class _Lingering(asyncio.Protocol):
    """Stands in for a protocol that has answered and is closing: drops whatever the client still sends
    (so the answer is read rather than reset), and hands the end of the connection back to its owner."""

    def __init__(self, owner: BoundedHttpToolsProtocol) -> None:
        self._owner = owner

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.connection_lost(exc)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of `GatewayConfig.limits`.

    - The request head (request line, headers, and a chunked body's trailers) is counted per read, before
      the parser sees it: past `max_header_bytes` the client gets 431 and the connection closes. The
      parser never holds more than the bound plus one read.
    - A head must be complete within `header_timeout` of the connection (or of the end of the previous
      response); an idle keep-alive connection is closed after `keepalive_timeout`. One timer per
      request serves both, armed where uvicorn arms its keep-alive timer and cancelled once the head is in.
    - Within a body, at most `body_timeout` of silence between reads that carry body bytes; then the
      connection closes and the app, if it waits for the body, receives `http.disconnect`. Silence the
      server causes itself (reading paused while the app is busy, `100 Continue` not yet sent) does not
      count. The timer is armed only for bodies that span reads, and re-armed only when it fires.
    - Past `max_connections` open connections a new one is answered 503 and closed at once.
    """

    # uvicorn's own attributes (28) stay in the instance dict; with ours there too it would pass the 30
    # keys a dict can share with the other instances of the class, and cost 1.5 KB per connection.
    __slots__ = (
        "_asgi",
        "_bodiless_bytes",
        "_body_heard_at",
        "_body_in_read",
        "_body_pending",
        "_body_timeout",
        "_body_timer",
        "_gone",
        "_head_began",
        "_head_bytes",
        "_head_timeout",
        "_head_timer",
        "_idle_timeout",
        "_linger_timer",
        "_max_connections",
        "_max_head_bytes",
        "_reading_head",
    )

    _refusals: ClassVar[_EveryFewSeconds] = _EveryFewSeconds(10.0)

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.pipeline = cast(deque[tuple[RequestResponseCycle, Any]], Pipeline())
        self._asgi = _ASGI_ENTRIES[self.asgi_version]
        limits = cast(GatewayConfig, config).limits
        self._max_head_bytes = limits.max_header_bytes
        self._head_timeout = limits.header_timeout
        # After a response the connection is idle: it closes at the keep-alive timeout if nothing comes,
        # and at the head timeout if a head began but did not end. The first check is at the earlier one.
        self._idle_timeout = min(limits.keepalive_timeout, limits.header_timeout)
        self._body_timeout = limits.body_timeout
        self._max_connections = limits.max_connections
        # Bytes read since the current head began, while it is incomplete (`_reading_head`).
        self._reading_head = True
        self._head_bytes = 0
        self._head_began = 0.0
        self._head_timer: asyncio.TimerHandle | None = None
        # A body is incomplete (`_body_pending`); did the last read carry body bytes; how many bytes of
        # reads without any came since (chunk framing, trailers); when the last body bytes came.
        self._body_pending = False
        self._body_in_read = False
        self._bodiless_bytes = 0
        self._body_heard_at = 0.0
        self._body_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        # Each request's cycle until its response is complete: its ClientGone (see client_presence) is on
        # its scope.
        self._gone: list[RequestResponseCycle] = []

    # -- connection --------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._max_connections:
            self._refuse(transport)
            return
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, self.loop)))
        self.flow = LeanFlowControl(self.transport)
        # The addresses every request's scope names, shared rather than one copy per connection (a waiting
        # request keeps its connection's): the server's is the same for all, a client's host often is.
        if self.server is not None:
            self.server = _known_addresses.setdefault(self.server, self.server)
        if self.client is not None:
            host, port = self.client
            self.client = (_known_hosts.setdefault(host, host), port)
            if len(_known_hosts) > _KNOWN_HOSTS_KEPT:
                _known_hosts.clear()
        self._head_began = self.loop.time()
        self._head_timer = self.loop.call_later(self._head_timeout, self._head_deadline_passed)

    def _refuse(self, transport: asyncio.Transport) -> None:
        # Never registered in `connections`: uvicorn's connection_lost then has nothing to undo.
        self.transport = transport
        transport.write(_json_answer(self.server_state, 503, "too many connections", b"retry-after: 1\r\n"))
        transport.close()
        if self._refusals.due():
            log.warning(
                "refused %d connection(s): %d open, the ceiling is OLLAMA_GATE_MAX_CONNECTIONS=%d",
                self._refusals.unlogged,
                len(self.connections),
                self._max_connections,
            )
            self._refusals.unlogged = 0

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._body_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._linger_timer = None
        self._body_pending = False
        super().connection_lost(exc)
        gone, self._gone = self._gone, []
        for cycle in gone:
            if not cycle.response_complete:
                cast(ClientGone, cycle.scope[CLIENT_GONE]).fire()  # type: ignore[literal-required]

    def handle_websocket_upgrade(self) -> None:
        # The connection now belongs to the websocket protocol: none of our timers may close it.
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        self._body_pending = False
        super().handle_websocket_upgrade()

    # -- reads -------------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head_bytes:
                self._head_over_limit(data)
                return
        _base_data_received(self, data)
        if self._body_pending:
            self._body_read(len(data))

    def _head_over_limit(self, data: bytes) -> None:
        """This read takes the head past the bound: the head may still end within it, so the parser gets
        the bytes up to the bound, and the rest only if the head did end there."""
        fits = len(data) - (self._head_bytes - self._max_head_bytes)
        if fits > 0:
            super().data_received(data[:fits])
            if self.transport.is_closing():  # e.g. a malformed request, already answered 400
                return
        if self._reading_head and self._head_bytes > self._max_head_bytes:
            self._head_too_large()
            return
        # The head ended within the bound (on_message_complete may even have begun the next one).
        self.data_received(data[fits:])

    def _head_too_large(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A pipelined head grew too large while the previous response is still being sent: an answer
            # now would land in the middle of it. The client asked for this; the connection just closes.
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.close()
            return
        self._answer_and_linger(_json_answer(self.server_state, 431, "request headers too large"))

    def _answer_and_linger(self, answer: bytes) -> None:
        """Send `answer`, stop sending, and drain the client's input for a moment before closing, so that
        a client still writing (a 16 MB header) reads the answer instead of a connection reset."""
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None
        self._body_pending = False
        transport = self.transport
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        transport.set_protocol(_Lingering(self))
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, transport.close)

    # -- parser callbacks --------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        """uvicorn's, with the scope's `asgi` entry shared (see `_ASGI_ENTRIES`)."""
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": self._asgi,
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }

    def on_header(self, name: bytes, value: bytes) -> None:
        """uvicorn's, with the lower-cased names shared (see `_known_header_names`)."""
        lowered = _known_header_names.get(name)
        if lowered is None:
            lowered = name.lower()
            if len(_known_header_names) < _HEADER_NAMES_KEPT:
                _known_header_names[name] = lowered
        if lowered == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((lowered, value))

    def on_headers_complete(self) -> None:
        """uvicorn's, with the gateway's cycle (`GatewayCycle`, with a lean event), the request's
        `ClientGone`, and the end of the head's deadline."""
        self._reading_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        # Until on_message_complete a body is awaited; the end of the head counts as its first sign of life.
        self._body_pending = True
        self._body_in_read = True
        scope = self.scope
        # A key of the scope itself rather than of an `extensions` dict made for it: that dict lives as long
        # as the request (172 bytes; without it Litestar's Request makes an empty one, 64), and a waiting
        # request lives long.
        cast(dict[str, object], scope)[CLIENT_GONE] = ClientGone()
        parser = self.parser
        http_version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = parsed_url.query or b""
        app: Any = self.app
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
        ):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        existing_cycle = self.cycle
        self.cycle = cycle = GatewayCycle(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=cast(asyncio.Event, LeanEvent()),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        gone = self._gone
        if gone and gone[0].response_complete:
            # Pipelined requests answer in order: those whose responses completed are done with. (The list
            # is the connection's own, kept: not a new one per request.)
            gone[:] = [each for each in gone if not each.response_complete]
        gone.append(cycle)
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(cycle, app)
        else:
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))

    def on_body(self, body: bytes) -> None:
        self._body_in_read = True
        _base_on_body(self, body)

    def on_message_complete(self) -> None:
        self._body_pending = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        # Whatever comes next belongs to the next request's head.
        self._reading_head = True
        self._head_bytes = 0
        _base_on_message_complete(self)
        if self.cycle.response_complete and not self.transport.is_closing():
            # The app answered before the body ended (401, 413): the connection is idle from now.
            self._arm_idle_timer()

    def on_response_complete(self) -> None:
        """uvicorn's, with our idle/head timer in place of its keep-alive timer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        # The answer is whole: its bytes go now, not at the loop's next turn, which comes only after the
        # request's own epilogue (its metrics, its task's end) has run.
        cast(CoalescingTransport, self.transport).flush()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._reading_head:
            self._arm_idle_timer()
        # else the request's body is still arriving (an early answer): on_message_complete arms the timer.

    # -- the head deadline and keep-alive ----------------------------------------------------------------

    def _arm_idle_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_began = self.loop.time()
        self._head_timer = self.loop.call_later(self._idle_timeout, self._head_deadline_passed)

    def _head_deadline_passed(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._reading_head:
            return
        if self._head_bytes:
            left = self._head_began + self._head_timeout - self.loop.time()
            if left > TIMER_SLACK:  # the keep-alive check came first, and a head is on its way
                self._head_timer = self.loop.call_later(left, self._head_deadline_passed)
                return
            # A partial head: tell the client why (nothing of a response has started on this connection).
            self.transport.write(_json_answer(self.server_state, 408, "request head not received in time"))
        # No byte of a new request: an idle connection (keep-alive expiry), closed without a word.
        self.transport.close()

    # -- the body deadline -------------------------------------------------------------------------------

    def _body_read(self, received: int) -> None:
        """After a read while a body is incomplete: note progress, bound bytes that carry none."""
        if self._body_in_read:
            self._body_in_read = False
            self._bodiless_bytes = 0
            self._body_heard_at = self.loop.time()
        else:
            # Chunk framing or trailers only: trailers are headers the parser buffers, so they share the
            # head's bound (as does an endless chunk extension, which would otherwise never count as silence).
            self._bodiless_bytes += received
            if self._bodiless_bytes > self._max_head_bytes:
                self._body_over_limit()
                return
        if self._body_timer is None:
            self._body_timer = self.loop.call_later(self._body_timeout, self._body_deadline_passed)

    def _body_deadline_passed(self) -> None:
        self._body_timer = None
        if not self._body_pending or self.transport.is_closing():
            return
        now = self.loop.time()
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            # The client waits for us (the app has not read what is buffered, or not asked for the body).
            self._body_heard_at = now
        left = self._body_heard_at + self._body_timeout - now
        if left > TIMER_SLACK:
            self._body_timer = self.loop.call_later(left, self._body_deadline_passed)
            return
        self._end_body(408, "request body not received in time")

    def _body_over_limit(self) -> None:
        self._end_body(431, "request headers too large")

    def _end_body(self, status: int, detail: str) -> None:
        """Give up on a body: the app that waits for it sees `http.disconnect`; the client gets `status`
        unless a response has already begun."""
        cycle = self.cycle
        answered = cycle is None or cycle.response_started
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if answered:
            self.transport.close()
        else:
            self._answer_and_linger(_json_answer(self.server_state, status, detail))

    # -- shutdown ------------------------------------------------------------------------------------------

    def abandon(self) -> None:
        """At the shutdown deadline: the request in flight will be cancelled. Tell its client (503, if no
        response has begun), make sure nothing else is written, and close."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not cycle.response_started and not cycle.disconnected and not self.transport.is_closing():
                # The id the app gave the request (request_edge), as every other answer carries it.
                request_id = cycle.scope.get("state", {}).get("request_id")
                extra = b"x-request-id: " + request_id.encode("ascii") + b"\r\n" if request_id else b""
                self.transport.write(_json_answer(self.server_state, 503, "server shutting down", extra))
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


class _QuietCancellation(logging.Filter):
    """uvicorn logs every cancelled request as "Exception in ASGI application" with a traceback. At the
    shutdown deadline that is the plan, not a crash: one summary line says it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, asyncio.CancelledError)


class GatewayServer(Server):
    """uvicorn's Server with the gateway's shutdown.

    The first SIGTERM or SIGINT stops accepting and lets in-flight requests finish for at most
    `shutdown_timeout` seconds; a second one ends the wait at once. Then whatever still runs is cancelled
    (its client gets 503 if nothing was sent yet; the services record a `cancelled` usage row), and the
    app's lifespan shutdown always runs, so the usage writer flushes every row. The process then returns
    normally (exit code 0): unlike stock uvicorn it does not re-raise the signal it handled.

    A worker under `GatewaySupervisor` (`supervised`) ignores SIGINT: Ctrl+C in a terminal reaches the
    whole process group, and the supervisor relays it as SIGTERM; counting both would be a second signal.
    """

    def __init__(self, config: GatewayConfig, supervised: bool = False) -> None:
        super().__init__(config)
        self._shutdown_timeout = config.limits.shutdown_timeout
        self._supervised = supervised

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._supervised and sig == signal.SIGINT:
            return
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info("shutting down")
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()  # idle connections close now, busy ones after their response
        await self._drain()
        if state.tasks or state.connections:
            await self._cancel_in_flight()
        for server in self.servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), LINGER_SECONDS)
        # Always, even after a second signal: this is where the usage writer flushes its rows.
        await self.lifespan.shutdown()

    async def _drain(self) -> None:
        state = self.server_state
        if not (state.connections or state.tasks) or self.force_exit:
            return
        if state.tasks:
            log.info(
                "waiting up to %g s for %d request(s) in flight (a second SIGTERM or SIGINT stops at once)",
                self._shutdown_timeout,
                len(state.tasks),
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._shutdown_timeout

        def waiting() -> bool:
            return bool(state.connections or state.tasks) and not self.force_exit and loop.time() < deadline

        # Polled, as uvicorn does: connections and tasks come and go without an event, and force_exit is
        # set by a signal handler.
        while waiting():  # noqa: ASYNC110
            await asyncio.sleep(0.1)

    async def _cancel_in_flight(self) -> None:
        """Close every connection left (503 where no response began) and cancel every request left."""
        state = self.server_state
        tasks = list(state.tasks)
        if tasks:
            why = "a second signal" if self.force_exit else f"the {self._shutdown_timeout:g} s deadline"
            log.warning("cancelling %d request(s) still running at %s", len(tasks), why)
        for connection in list(state.connections):
            if isinstance(connection, BoundedHttpToolsProtocol):
                connection.abandon()
            else:  # a websocket: uvicorn's own way
                connection.shutdown()
        if not tasks:
            return
        quiet = _QuietCancellation()
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.addFilter(quiet)
        try:
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=CANCEL_GRACE_SECONDS)
        finally:
            uvicorn_log.removeFilter(quiet)
        if pending:
            log.error("%d cancelled request(s) did not end within %g s", len(pending), CANCEL_GRACE_SECONDS)


class GatewayWorker(Process):
    """A worker process of `GatewaySupervisor`: it runs a `GatewayServer` (uvicorn's runs its own)."""

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = GatewayServer(cast(GatewayConfig, self.config), supervised=True)
        return self._server


class GatewaySupervisor(Multiprocess):
    """uvicorn's `--workers` supervisor, with `GatewayWorker`s and a stop that is bounded.

    uvicorn's Multiprocess builds its workers in four places (start, replacing a dead worker, SIGHUP,
    SIGTTIN) and names its own Process class in each; they are repeated here with `GatewayWorker`.

    On stop it closes its copy of the listening socket (so that new clients are refused rather than left
    in the backlog), sends each worker one SIGTERM (each applies the shutdown deadline itself), relays a second
    SIGTERM or SIGINT to them (they stop at once), and kills a worker still alive
    `WORKER_STOP_GRACE_SECONDS` past the deadline, so the supervisor itself always ends.
    """

    def __init__(
        self,
        config: GatewayConfig,
        sockets: list[socket.socket],
        on_worker_exit: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(config, sockets)
        self._shutdown_timeout = config.limits.shutdown_timeout
        self._on_worker_exit = on_worker_exit

    def _exited(self, pid: int | None) -> None:
        """A worker is gone (its metrics' live gauges must no longer count)."""
        if self._on_worker_exit is not None and pid is not None:
            self._on_worker_exit(pid)

    def _new_worker(self) -> GatewayWorker:
        worker = GatewayWorker(self.config, self.sockets)
        worker.start()
        return worker

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            self.processes.append(self._new_worker())

    def keep_subprocess_alive(self) -> None:
        # uvicorn 0.54's, with GatewayWorker.
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            self._exited(process.pid)
            if process.exitcode == STARTUP_FAILURE:
                log.error("worker [%s] failed to start, stopping the supervisor", process.pid)
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            log.info("worker [%s] died, starting another", process.pid)
            self.processes[index] = self._new_worker()

    def restart_all(self) -> None:
        # uvicorn 0.54's (SIGHUP), with GatewayWorker.
        for index, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._new_worker()
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                if not self.should_exit.is_set():
                    log.error("new worker [%s] was not ready in time; keeping [%s]", new.pid, old.pid)
                return
            old.terminate()
            old.join()
            self._exited(old.pid)
            self.processes[index] = new

    def handle_ttin(self) -> None:
        log.info("Received SIGTTIN, increasing the number of processes.")
        self.processes_num += 1
        self.processes.append(self._new_worker())

    def terminate_all(self) -> None:
        # The listening socket is shared with the workers: once they close theirs, the supervisor's copy
        # would keep the port listening, and new clients would wait in the backlog for nobody.
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

    def join_all(self) -> None:
        deadline = time.monotonic() + self._shutdown_timeout + WORKER_STOP_GRACE_SECONDS
        relayed = False
        while any(worker.process.is_alive() for worker in self.processes):
            stop_signals = [sig for sig in self.signal_queue if sig in (signal.SIGINT, signal.SIGTERM)]
            self.signal_queue.clear()
            if stop_signals and not relayed:
                relayed = True
                log.info("second stop signal: the workers stop at once")
                for worker in self.processes:
                    if worker.process.is_alive() and worker.pid is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(worker.pid, signal.SIGTERM)
                deadline = min(deadline, time.monotonic() + WORKER_STOP_GRACE_SECONDS)
            if time.monotonic() > deadline:
                for worker in self.processes:
                    if worker.process.is_alive():
                        log.error("worker [%s] did not stop in time: killed", worker.pid)
                        worker.process.kill()
                break
            for worker in self.processes:
                worker.process.join(0.1)
        for worker in self.processes:
            worker.process.join()


def raise_open_file_limit() -> int | None:
    """Raise RLIMIT_NOFILE's soft limit to the hard one (every connection is a file descriptor; the
    default soft limit of 1024 is a few hundred slow clients). Returns the soft limit in force, None where
    there is no such limit; never fails."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        log.debug("open-file limit: %d (already the hard limit)", soft)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as error:
        log.debug("open-file limit stays at %d (the hard limit %d could not be set: %s)", soft, hard, error)
        return soft
    log.debug("open-file limit raised from %d to %d", soft, hard)
    return hard


def serve(
    app: Any,
    limits: HttpLimits,
    workers: int,
    on_worker_exit: Callable[[int], None] | None = None,
    **options: Any,
) -> None:
    """Run the gateway: one `GatewayServer`, or `workers` of them under a `GatewaySupervisor` (then `app`
    is an import string and each worker builds its own app; `on_worker_exit(pid)` hears of each that
    ends)."""
    open_files = raise_open_file_limit()
    if open_files is not None and limits.max_connections > open_files - RESERVED_DESCRIPTORS:
        log.warning(
            "OLLAMA_GATE_MAX_CONNECTIONS=%d is more than the open-file limit (%d) leaves for clients: "
            "past about %d connections, accepting fails instead of refusing cleanly",
            limits.max_connections,
            open_files,
            max(open_files - RESERVED_DESCRIPTORS, 0),
        )
    config = GatewayConfig(app, limits, workers=workers, **options)
    if workers > 1:
        GatewaySupervisor(config, sockets=[config.bind_socket()], on_worker_exit=on_worker_exit).run()
    else:
        GatewayServer(config).run()
