"""The gateway's server in a thread of the test: it sends a whole answer as soon as it is complete (not at
the event loop's next turn, which comes only after the request's own epilogue: its metrics, its task's
end), its connections share the addresses their scopes name, and its requests share their header names
and their `asgi` entry."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ollama_gate.entrypoints.http_server import GatewayConfig, GatewayServer, HttpLimits

EPILOGUE_WAIT = 10.0


class EpilogueApp:
    """Answers `ok`, then blocks the event loop (as a slow epilogue would) until the client has read
    the answer or `EPILOGUE_WAIT` passes."""

    def __init__(self) -> None:
        self.client_read = threading.Event()
        self.read_during_epilogue: queue.Queue[bool] = queue.Queue()
        self.addresses: list[tuple[Any, Any]] = []
        self.heads: list[tuple[list[tuple[bytes, bytes]], Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.addresses.append((scope["server"], scope["client"]))
        self.heads.append((scope["headers"], scope["asgi"]))
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})
        # The loop does nothing else until this returns: the answer can only reach the client if it
        # was written already.
        read = self.client_read.wait(EPILOGUE_WAIT)
        self.client_read.clear()
        self.read_during_epilogue.put(read)


@pytest.fixture
def served() -> Iterator[tuple[EpilogueApp, int]]:
    app = EpilogueApp()
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    config = GatewayConfig(app, HttpLimits(), lifespan="off", log_level="warning")
    server = GatewayServer(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the server did not start"
    try:
        yield app, listening.getsockname()[1]
    finally:
        app.client_read.set()
        server.should_exit = True
        thread.join(timeout=30)
        listening.close()


def read_answer(connection: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n\r\nok"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_an_answer_reaches_the_client_before_the_requests_epilogue_ends(
    served: tuple[EpilogueApp, int],
) -> None:
    app, port = served
    with socket.create_connection(("127.0.0.1", port), timeout=EPILOGUE_WAIT * 2) as connection:
        for _ in range(3):  # keep-alive: each answer of the connection, not only the first
            connection.sendall(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            answer = read_answer(connection)
            app.client_read.set()
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nok")
            assert app.read_during_epilogue.get(timeout=EPILOGUE_WAIT * 2) is True


def test_connections_share_the_servers_address_and_their_clients_host(
    served: tuple[EpilogueApp, int],
) -> None:
    app, port = served
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=EPILOGUE_WAIT * 2) as connection:
            connection.sendall(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            assert read_answer(connection).endswith(b"ok")
            app.client_read.set()
            assert app.read_during_epilogue.get(timeout=EPILOGUE_WAIT * 2) is True
    (server_1, client_1), (server_2, client_2) = app.addresses
    assert server_1 == ("127.0.0.1", port) and server_1 is server_2
    assert client_1[0] == "127.0.0.1" and client_1[0] is client_2[0]
    assert client_1[1] != client_2[1]  # two connections: two ports


def test_requests_share_their_lowered_header_names_and_their_asgi_entry(
    served: tuple[EpilogueApp, int],
) -> None:
    app, port = served
    past_the_names_kept = "".join(f"X-Name-{number}: v\r\n" for number in range(300))
    for extra in ("", past_the_names_kept):
        with socket.create_connection(("127.0.0.1", port), timeout=EPILOGUE_WAIT * 2) as connection:
            connection.sendall(f"GET / HTTP/1.1\r\nHost: test\r\nX-Mixed-Case: 1\r\n{extra}\r\n".encode())
            assert read_answer(connection).endswith(b"ok")
            app.client_read.set()
            assert app.read_during_epilogue.get(timeout=EPILOGUE_WAIT * 2) is True
    (headers_1, asgi_1), (headers_2, asgi_2) = app.heads
    assert headers_1 == [(b"host", b"test"), (b"x-mixed-case", b"1")]
    assert all(name_2 is name_1 for (name_1, _), (name_2, _) in zip(headers_1, headers_2, strict=False))
    assert headers_2[2:] == [(f"x-name-{number}".encode(), b"v") for number in range(300)]
    assert asgi_1 == {"version": "3.0", "spec_version": "2.3"} and asgi_2 is asgi_1
