"""The Ollama adapter's line splitting, against a real socket that sends a stream in awkward pieces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ollama_gate.adapters.ollama_http import OllamaHttpBackend

# Each piece is written on its own, a pause apart, so that it arrives as a read of its own.
PIECES = [
    b'{"a":1}\n',  # exactly one whole line: relayed as it came
    b'{"b":',  # a line split over two reads
    b'2}\n{"c":3}\n',  # ... whose end arrives with a whole line after it
    b"\n",  # an empty line: skipped
    b'{"d":4}\n{"e":',  # a whole line and the start of the next
    b"5}",  # the last line, without its newline
]


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n")
    for piece in PIECES:
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(piece)
    await writer.drain()
    writer.close()


@pytest.fixture
async def backend() -> AsyncIterator[OllamaHttpBackend]:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ollama = OllamaHttpBackend(f"http://127.0.0.1:{port}", connect_timeout=2, read_timeout=5)
    await ollama.start()
    yield ollama
    await ollama.close()
    server.close()
    await server.wait_closed()


async def test_lines_end_with_their_newline_however_the_reads_cut_them(backend: OllamaHttpBackend) -> None:
    response = await backend.post("/api/generate", b"{}")
    lines = [line async for line in response.lines()]
    response.close()
    assert lines == [b'{"a":1}\n', b'{"b":2}\n', b'{"c":3}\n', b'{"d":4}\n', b'{"e":5}\n']
