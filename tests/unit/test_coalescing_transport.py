"""Writes of one turn of the loop go out as one; nothing is lost, reordered, or sent after closing."""

from __future__ import annotations

import asyncio

from ollama_gate.entrypoints.coalescing_transport import CoalescingTransport
from tests.support.recording_transport import RecordingTransport


def wrapped() -> tuple[CoalescingTransport, RecordingTransport]:
    inner = RecordingTransport()
    return CoalescingTransport(inner, asyncio.get_running_loop()), inner  # type: ignore[arg-type]


async def test_a_head_and_its_body_in_one_turn_are_one_write() -> None:
    transport, inner = wrapped()
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"")
    transport.write(bytearray(b"{}"))
    assert inner.writes == [] and transport.get_write_buffer_size() == 21
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert inner.writes[1:] == [b"next"]  # a later turn: its own write


async def test_closing_sends_what_waits_first_and_nothing_after() -> None:
    transport, inner = wrapped()
    transport.writelines([b"a", b"b"])
    transport.close()
    assert inner.writes == [b"ab"] and inner.closed
    transport.write(b"late")
    await asyncio.sleep(0)
    assert inner.writes == [b"ab"]


async def test_eof_follows_the_bytes_and_abort_drops_them() -> None:
    transport, inner = wrapped()
    transport.write(b"answer")
    transport.write_eof()
    assert (inner.writes, inner.eof) == ([b"answer"], True)
    transport.write(b"dropped")
    transport.abort()
    await asyncio.sleep(0)
    assert inner.writes == [b"answer"] and inner.aborted


async def test_everything_else_is_the_wrapped_transports() -> None:
    transport, inner = wrapped()
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1234)
    assert transport.get_extra_info("sslcontext", "none") == "none"
    transport.pause_reading()
    transport.resume_reading()
    assert inner.reading == ["paused", "resumed"]
    assert transport.wrapped is inner  # type: ignore[comparison-overlap]


def test_it_answers_all_of_asyncio_s_transport_api() -> None:
    # No `__getattr__` passes unknown names on: every public method of a transport is its own.
    public = {name for name in dir(asyncio.Transport) if not name.startswith("_")}
    assert public <= set(dir(CoalescingTransport))
    assert not hasattr(CoalescingTransport, "__getattr__")
