"""A transport for tests of what is written to a connection: it keeps each write, and records closing,
the end of writing and the pauses of reading."""

from __future__ import annotations

from typing import Any

# The connection's two ends, as a TCP transport names them.
ADDRESSES = {"peername": ("127.0.0.1", 1234), "sockname": ("127.0.0.1", 8000)}


class RecordingTransport:
    """What the server side asks of a TCP transport."""

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
        return ADDRESSES.get(name, default)

    def pause_reading(self) -> None:
        self.reading.append("paused")

    def resume_reading(self) -> None:
        self.reading.append("resumed")
