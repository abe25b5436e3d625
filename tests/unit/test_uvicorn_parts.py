"""The stand-ins behave as uvicorn's parts they replace, for what uvicorn does with them: the lean event and
pipeline as asyncio.Event and deque, the gateway's cycle as uvicorn's own (the same bytes, the same
state, the same refusals)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from ollama_gate.entrypoints.uvicorn_parts import GatewayCycle, LeanEvent, Pipeline


async def test_an_event_wakes_every_waiter_and_later_waits_return_at_once() -> None:
    event = LeanEvent()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters) and not event.is_set()
    event.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert await asyncio.wait_for(event.wait(), 1) is True


async def test_a_cleared_event_blocks_again_until_it_is_set() -> None:
    event = LeanEvent(True)
    event.clear()
    waiter = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    event.set()
    assert await waiter is True


async def test_a_cancelled_waiter_leaves_and_the_others_still_wake() -> None:
    event = LeanEvent()
    leaving = asyncio.create_task(event.wait())
    staying = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    event.set()
    assert await staying is True
    event.clear()
    again = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    event.set()
    assert await again is True


def test_the_pipeline_hands_requests_out_first_in_first_out() -> None:
    pipeline = Pipeline()
    assert not pipeline
    cycles = [cast(RequestResponseCycle, object()) for _ in range(3)]
    for cycle in cycles:
        pipeline.appendleft((cycle, None))
    assert [pipeline.pop()[0] for _ in range(3)] == cycles
    assert not pipeline


class RecordingTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return False


class OpenFlow:
    write_paused = False


class Ends:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def cycle_of(
    kind: type[RequestResponseCycle], method: str, keep_alive: bool, ends: Ends | None = None
) -> RequestResponseCycle:
    return kind(
        scope=cast(Any, {"method": method}),
        transport=cast(Any, RecordingTransport()),
        flow=cast(Any, OpenFlow()),
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[(b"server", b"x")],
        message_event=cast(asyncio.Event, LeanEvent()),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=ends or Ends(),
    )


async def outcome(cycle: RequestResponseCycle, message: Any) -> tuple[Any, ...]:
    """What sending `message` did: the bytes written and the cycle's state after; for a refused head, that
    it was refused, what was written (nothing) and that the response counts as started (uvicorn then closes
    the connection: the rest of the state no longer matters, nor which of two faults was seen first)."""
    written = cast(RecordingTransport, cycle.transport).written
    try:
        await cycle.send(message)
    except (RuntimeError, ValueError):  # a forbidden byte; a content-length that is no number
        return ("refused", written, cycle.response_started)
    return (
        written,
        cycle.response_started,
        cycle.keep_alive,
        cycle.chunked_encoding,
        cycle.expected_content_length,
    )


TOKEN = st.sampled_from([b"content-length", b"Transfer-Encoding", b"connection", b"x-a", b"RateLimit", b"b"])
NAME = st.one_of(TOKEN, st.binary(max_size=6))
VALUE = st.one_of(
    st.sampled_from([b"12", b"chunked", b"CHUNKED", b"close", b"keep-alive, Close", b"v"]),
    st.binary(max_size=6),
)


@given(
    headers=st.lists(st.tuples(NAME, VALUE), max_size=6),
    status=st.sampled_from([200, 204, 304, 404, 500]),
    method=st.sampled_from(["GET", "HEAD", "POST"]),
    keep_alive=st.booleans(),
)
async def test_the_gateways_cycle_writes_a_head_as_uvicorns_does(
    headers: list[tuple[bytes, bytes]], status: int, method: str, keep_alive: bool
) -> None:
    """Byte for byte, state for state, refusal for refusal (a name or value with a forbidden byte, such as
    a CR or LF that would split the head, is refused by both)."""
    message = {"type": "http.response.start", "status": status, "headers": headers}
    ours = await outcome(cycle_of(GatewayCycle, method, keep_alive), message)
    uvicorns = await outcome(cycle_of(RequestResponseCycle, method, keep_alive), message)
    assert ours == uvicorns


async def test_the_gateways_cycle_refuses_a_value_that_would_split_the_head() -> None:
    message = {"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"ok\r\nx-b: injected")]}
    cycle = cycle_of(GatewayCycle, "GET", True)
    with pytest.raises(RuntimeError, match="Invalid HTTP header value"):
        await cycle.send(cast(Any, message))
    assert cast(RecordingTransport, cycle.transport).written == []


async def test_the_gateways_cycle_sends_the_body_through_uvicorns_send() -> None:
    cycle = cycle_of(GatewayCycle, "GET", True)
    await cycle.send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await cycle.send({"type": "http.response.body", "body": b"ok", "more_body": False})
    written = cast(RecordingTransport, cycle.transport).written
    assert written[-1] == b"ok" and written[0].endswith(b"content-length: 2\r\n\r\n")
    assert cycle.response_complete


def start(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": 200, "headers": list(headers)}


def body(data: bytes, more_body: bool) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more_body}


HEADS = st.sampled_from(
    [
        start(),
        start((b"content-length", b"0")),
        start((b"content-length", b"5")),
        start((b"transfer-encoding", b"chunked")),
        start((b"content-length", b"3"), (b"connection", b"close")),
    ]
)
LATER = st.one_of(
    st.builds(body, st.binary(max_size=6), st.booleans()),
    st.just("disconnect"),
    HEADS,  # a second head: out of order
    st.just({"type": "http.response.body"}),  # no body, no more_body: the end
)


async def replay(cycle: RequestResponseCycle, ends: Ends, messages: list[Any]) -> list[Any]:
    """Each message's effect on the cycle, until one is refused (uvicorn then closes the connection)."""
    transport = cast(RecordingTransport, cycle.transport)
    seen: list[Any] = []
    for message in messages:
        if message == "disconnect":
            cycle.disconnected = True
            continue
        try:
            await cycle.send(message)
        except RuntimeError as error:
            seen.append(("refused", str(error)))
            break
        seen.append((list(transport.written), cycle.response_complete, cycle.expected_content_length))
    return [*seen, transport.closed, ends.count, cycle.message_event.is_set()]


@given(
    head=HEADS,
    later=st.lists(LATER, max_size=6),
    method=st.sampled_from(["GET", "HEAD"]),
    keep_alive=st.booleans(),
)
async def test_the_gateways_cycle_sends_a_whole_response_as_uvicorns_does(
    head: dict[str, Any], later: list[Any], method: str, keep_alive: bool
) -> None:
    """Head, chunks and end, byte for byte: chunked or counted, a HEAD's body dropped, a body longer or
    shorter than its length refused, nothing after a disconnect, messages out of order refused, and the
    end of the response (its event, its callback, a closed connection without keep-alive) once."""
    ours_ends, uvicorns_ends = Ends(), Ends()
    ours = await replay(cycle_of(GatewayCycle, method, keep_alive, ours_ends), ours_ends, [head, *later])
    uvicorns = await replay(
        cycle_of(RequestResponseCycle, method, keep_alive, uvicorns_ends), uvicorns_ends, [head, *later]
    )
    assert ours == uvicorns
