"""Writes of one turn of the loop go out as one; nothing is lost, reordered, or sent after closing."""

from __future__ import annotations

import asyncio
from typing import Any

from ollama_gate.entrypoints.coalescing_transport import CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.eof = False
        self.aborted = False
        self.reading: list[str] = []

    def write(self, data: bytes) -> None:
        assert not self.closed, "a write after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write_eof(self) -> None:
        self.eof = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1234) if name == "peername" else default

    def pause_reading(self) -> None:
        self.reading.append("paused")

    def resume_reading(self) -> None:
        self.reading.append("resumed")


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
