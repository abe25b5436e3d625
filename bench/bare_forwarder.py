"""The benchmark issue's reference point: a bare Litestar + aiohttp forwarder, with no auth, no quotas and
no logging, run as its own process.

`python -m bench.bare_forwarder --port 11600 --upstream http://127.0.0.1:11500`

- `POST /chat`: reads the request body, ignores it, sends a fixed non-streaming `/api/generate` body
  upstream and answers with the upstream's bytes.
- `POST /chat/stream`: the same with a streaming body; the NDJSON is passed through as it arrives.

Why it exists: the issue's targets were set on a reference machine where this forwarder served about
6,300 requests/s and added about 0.26 ms (p50, one connection). Absolute numbers do not carry across
machines, so the bench measures this forwarder in every run, next to the gateway, and scales the targets
by what it does on the machine at hand. It is the same stack as the gateway (uvicorn with uvloop and
httptools, Litestar, one aiohttp session) minus everything the gateway adds.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import uvicorn
from litestar import Litestar, Request, Response, post
from litestar.response import Stream

from bench.load_client import DIRECT_JSON_BODY, DIRECT_STREAM_BODY

JSON_HEADERS = {"Content-Type": "application/json"}


class Upstream:
    """One aiohttp session to the upstream's /api/generate, opened and closed with the app."""

    def __init__(self, base_url: str) -> None:
        self._url = base_url.rstrip("/") + "/api/generate"
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        # No pool limit, like the gateway's connector: a thousand streams need a thousand connections.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def generate(self, body: bytes) -> aiohttp.ClientResponse:
        assert self._session is not None, "the session opens on start-up"
        return await self._session.post(self._url, data=body, headers=JSON_HEADERS)


async def _relay(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for data in response.content.iter_any():
            yield data
    finally:
        response.release()


def create_app(upstream_url: str) -> Litestar:
    upstream = Upstream(upstream_url)

    # Both handlers read the body they ignore: a forwarder receives the whole request before it answers.
    @post("/chat", status_code=200)
    async def chat(request: Request[Any, Any, Any]) -> Response[bytes]:
        await request.body()
        async with await upstream.generate(DIRECT_JSON_BODY) as response:
            data = await response.read()
        return Response(data, media_type="application/json")

    @post("/chat/stream", status_code=200)
    async def chat_stream(request: Request[Any, Any, Any]) -> Stream:
        await request.body()
        response = await upstream.generate(DIRECT_STREAM_BODY)
        return Stream(_relay(response), media_type="application/x-ndjson")

    return Litestar([chat, chat_stream], on_startup=[upstream.open], on_shutdown=[upstream.close])


def main() -> None:
    parser = argparse.ArgumentParser(description="A bare Litestar + aiohttp forwarder (bench calibration).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's base URL")
    args = parser.parse_args()
    # uvicorn handles SIGTERM: it stops accepting, finishes open requests and runs on_shutdown.
    uvicorn.run(
        create_app(args.upstream),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
