"""The soak's traffic: a fixed mix of requests at a steady rate for a while, run as its own process.

`python -m bench.soak_client --url http://127.0.0.1:8000 --keys-file F --seconds 600 --rate 150`

Each request is one of these kinds, in turn (so the mix is exact whatever the duration):
- `chat`: `POST /chat` with a member key (JSON);
- `stream`: `POST /chat/stream` with a member key, read to its end;
- `generate`: Ollama's `POST /api/generate` with `"stream": false`, a member key;
- `native_chat`: Ollama's `POST /api/chat`, streamed (its default), read to its end;
- `openai`: `POST /v1/chat/completions` with the key as a Bearer;
- `anonymous`: `POST /chat` without a key, against a small anonymous limit: mostly 429;
- `cancel`: `POST /chat/stream` with a member key, closed after the first body bytes (a client that leaves).

Prints one JSON object: answers by kind and status, how many were cancelled, and transport errors.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import msgspec
import uvloop

KINDS = ("chat", "stream", "generate", "native_chat", "openai", "anonymous", "chat", "stream", "cancel")


def _request(kind: str, key: str) -> tuple[str, dict[str, object], dict[str, str]]:
    member = {"X-API-Key": key}
    if kind == "chat":
        return "/chat", {"message": "soak"}, member
    if kind in ("stream", "cancel"):
        return "/chat/stream", {"message": "soak"}, member
    if kind == "generate":
        return "/api/generate", {"model": "smollm:latest", "prompt": "soak", "stream": False}, member
    if kind == "native_chat":
        body: dict[str, object] = {
            "model": "smollm:latest",
            "messages": [{"role": "user", "content": "soak"}],
        }
        return "/api/chat", body, member
    if kind == "openai":
        openai: dict[str, object] = {
            "model": "smollm:latest",
            "messages": [{"role": "user", "content": "soak"}],
        }
        return "/v1/chat/completions", openai, {"Authorization": f"Bearer {key}"}
    return "/chat", {"message": "soak"}, {}


async def one(session: aiohttp.ClientSession, url: str, kind: str, key: str) -> int:
    path, body, headers = _request(kind, key)
    async with session.post(url + path, json=body, headers=headers) as response:
        if kind == "cancel" and response.status == 200:
            await response.content.readany()
            # Closing the response closes its connection: the gateway hears the client leave.
            response.close()
            return -1
        await response.read()
        return response.status


async def soak(url: str, keys: list[str], seconds: float, rate: float, workers: int) -> dict[str, object]:
    answers: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    kinds = itertools.cycle(KINDS)
    key_cycle = itertools.cycle(keys)
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + seconds
    sent = 0
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            nonlocal sent
            while True:
                # The n-th request of all is due at start + n / rate: a steady rate, whatever the latency.
                due = start + sent / rate
                if due >= end:
                    return
                sent += 1
                kind = next(kinds)
                key = next(key_cycle)
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    status = await one(session, url, kind, key)
                except (aiohttp.ClientError, TimeoutError) as error:
                    errors[f"{kind}: {type(error).__name__}"] += 1
                    continue
                answers[f"{kind} {'cancelled' if status == -1 else status}"] += 1

        await asyncio.gather(*(worker() for _ in range(workers)))
    return {
        "sent": sent,
        "seconds": loop.time() - start,
        "answers": dict(sorted(answers.items())),
        "errors": dict(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="The soak's mixed traffic.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--keys-file", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second, all kinds")
    parser.add_argument("--workers", type=int, default=64, help="requests in flight at most")
    args = parser.parse_args()
    keys = [line.strip() for line in Path(args.keys_file).read_text().splitlines() if line.strip()]
    started = time.monotonic()
    result = uvloop.run(soak(args.url.rstrip("/"), keys, args.seconds, args.rate, args.workers))
    result["wall_s"] = time.monotonic() - started
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")


if __name__ == "__main__":
    main()
