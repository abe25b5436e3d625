"""The gateway's protocol reads a request head as uvicorn's own does: `BoundedHttpToolsProtocol` replaces
uvicorn's `on_header` and `on_headers_complete` (shared header names, the gateway's cycle, a `ClientGone`
on the scope), so for any head both must give the app the same scope and write the same answer, pipelined
requests included."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from ollama_gate.entrypoints.client_presence import CLIENT_GONE
from ollama_gate.entrypoints.http_server import BoundedHttpToolsProtocol, GatewayConfig, HttpLimits
from tests.support.recording_transport import RecordingTransport


class RecordingApp:
    """Keeps each scope it is called with (as a plain dict) and answers 204 after reading the body."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        seen = dict(scope)
        seen.pop(CLIENT_GONE, None)  # the gateway's own key (see client_presence)
        seen["asgi"] = dict(seen["asgi"])  # shared and read-only in the gateway's, equal in content
        self.scopes.append(seen)
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 204, "headers": [(b"x-seen", b"1")]})
        await send({"type": "http.response.body", "body": b""})


async def serve(kind: str, data: bytes, root_path: str) -> tuple[list[dict[str, Any]], bytes, bool]:
    """What the app saw, what was written and whether the connection was closed, for `data` read at once
    by a protocol of `kind`."""
    app = RecordingApp()
    # No access log: with it on, the gateway's cycle hands every head to uvicorn's own send.
    options: dict[str, Any] = {
        "lifespan": "off",
        "ws": "none",
        "root_path": root_path,
        "access_log": False,
        "log_config": None,
    }
    config = (
        GatewayConfig(app, HttpLimits(), **options)
        if kind == "gateway"
        else Config(app, http="httptools", **options)
    )
    config.load()
    state = ServerState()
    protocol_class = BoundedHttpToolsProtocol if kind == "gateway" else HttpToolsProtocol
    protocol = protocol_class(config, state, {}, asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(data)
    for _ in range(50):  # the apps' tasks, and each pipelined request after the one before
        await asyncio.sleep(0)
        if state.tasks:
            await asyncio.gather(*state.tasks)
    flush = getattr(protocol.transport, "flush", None)
    if flush is not None:
        flush()  # the gateway's writes wait for the end of the loop's turn (CoalescingTransport)
    closed = transport.closed
    protocol.connection_lost(None)
    return app.scopes, b"".join(transport.writes), closed


SEGMENT = st.text(alphabet="abcXYZ019-._~!$&'()*+,;=:@%20%2F%41%zz", min_size=0, max_size=8)
PATH = st.lists(SEGMENT, min_size=0, max_size=3).map(lambda parts: "/" + "/".join(parts))
QUERY = st.one_of(st.just(""), st.text(alphabet="ab=&%2019?/", max_size=8).map(lambda text: "?" + text))
# The headers the protocol itself reads (keep-alive, 100-continue, upgrades), often, and others.
MEANINGFUL = st.sampled_from(
    [
        ("Connection", "keep-alive"),
        ("Connection", "close"),
        ("Expect", "100-continue"),
        ("Expect", "100-Continue"),
        ("Upgrade", "h2c"),
        ("Content-Type", "application/json"),
    ]
)
HEADER_NAME = st.sampled_from(["Host", "X-Api-Key", "Accept", "x-lower", "CONTENT-TYPE", "Upgrade"])
HEADER_VALUE = st.sampled_from(["a", "application/json", "h2c", "websocket", " spaced "])
HEADER = st.one_of(MEANINGFUL, st.tuples(HEADER_NAME, HEADER_VALUE))


def request(method: str, target: str, version: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = [f"{method} {target} HTTP/{version}", *(f"{name}: {value}" for name, value in headers)]
    if body or method == "POST":
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


REQUEST = st.builds(
    request,
    method=st.sampled_from(["GET", "POST", "HEAD", "DELETE", "OPTIONS"]),
    target=st.builds(lambda path, query: path + query, PATH, QUERY),
    version=st.sampled_from(["1.1", "1.0"]),
    headers=st.lists(HEADER, max_size=4),
    body=st.sampled_from([b"", b'{"message":"hi"}']),
)


@settings(max_examples=150, deadline=None)
@example(requests=[b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"], root_path="")
@given(requests=st.lists(REQUEST, min_size=1, max_size=3), root_path=st.sampled_from(["", "/gate"]))
async def test_the_gateways_protocol_reads_heads_as_uvicorns_does(
    requests: list[bytes], root_path: str
) -> None:
    """Method, version, path (unquoted, with the root path), raw path, query, headers (lower-cased, in
    order), client and server: the same scopes, the same bytes answered (a `100 Continue` included) and
    the same connection kept or closed, for one request or several pipelined in one read."""
    data = b"".join(requests)
    ours = await serve("gateway", data, root_path)
    uvicorns = await serve("uvicorn", data, root_path)
    assert ours == uvicorns


async def test_the_comparison_sees_every_pipelined_request() -> None:
    # The property above compares what both saw; this shows that what they see is the whole input.
    data = b"GET /a%20b?x=1 HTTP/1.1\r\nHost: h\r\n\r\n" + b"POST /c HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"
    scopes, written, closed = await serve("gateway", data, "/gate")
    assert [(scope["method"], scope["path"], scope["raw_path"]) for scope in scopes] == [
        ("GET", "/gate/a b", b"/gate/a%20b"),
        ("POST", "/gate/c", b"/gate/c"),
    ]
    assert scopes[0]["query_string"] == b"x=1" and scopes[0]["headers"] == [(b"host", b"h")]
    assert written.count(b"HTTP/1.1 204 ") == 2
    assert not closed  # keep-alive: the connection waits for a third
