"""A fake Ollama speaking its real wire format, run in a thread so tests can watch what it sees.

It generates like Ollama under load: at most `parallel` generations of one model at once (None: no
limit), the others waiting first-in first-out; it records the order in which generations started and
which ones their client abandoned (it notices a client that leaves, as Ollama does, and stops).

The prompt steers the behaviour, so concurrent tests never need to reconfigure it:
- `!hang`        accept the request, then never send a byte (until the client leaves: `seen.abandoned`)
- `!wait=S`      generate for S seconds before the answer (or a stream's first chunk) is sent
- `!error500`    500 `{"error": "..."}`;   `!busy`  503 (Ollama's queue-full answer);  `!bad` 400
- `!errorline`   (stream) two chunks, then an `{"error": ...}` line without a done chunk
- `!cut`         (stream) two chunks, then the connection is dropped
- `!stall`       (stream) two chunks, then silence
- `!slow`        (stream) 100 ms between chunks (for first-byte and disconnect tests)
- `!long`        (stream) 200 chunks, 50 ms apart: a long generation a client can walk away from
- `!held`        (stream) one chunk, then nothing until the test calls `release_held()` (at most 30 s):
                 proves without timing that a chunk is relayed while the upstream is still generating
Anything else is answered with `Echo: <prompt>`, one word per chunk when streamed.
An unknown model is a 404 `{"error": "model 'x' not found"}`, as Ollama answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_MODELS = {"smollm:latest": 990_000_000, "llama3.2:1b": 1_320_000_000}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ndjson_line(value: dict[str, Any]) -> bytes:
    # Ollama (Go) writes compact JSON, one object per line.
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def answer_words(prompt: str) -> list[str]:
    """The chunks of the answer to `prompt`: joined, they are `Echo: <prompt>`."""
    words = f"Echo: {prompt}".split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _final_fields(prompt: str, chunks: int) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": "stop",
        "context": list(range(10)),
        "total_duration": 1_000_000,
        "load_duration": 100_000,
        "prompt_eval_count": len(prompt.split()),
        "prompt_eval_duration": 200_000,
        "eval_count": chunks,
        "eval_duration": 700_000,
    }


@dataclass
class Observed:
    """What the fake has seen; read it from the test thread."""

    generate_requests: list[dict[str, Any]] = field(default_factory=list)
    tags_requests: int = 0
    streams_started: int = 0
    streams_finished: int = 0
    streams_abandoned: int = 0  # the client (the gateway) went away mid-stream
    hosts: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)  # prompts, in the order their generation began
    abandoned: list[str] = field(default_factory=list)  # prompts whose client left before the end
    generating: dict[str, int] = field(default_factory=dict)  # model -> generations running now
    most_generating: dict[str, int] = field(default_factory=dict)  # model -> the most ever at once

    def requests_with_prompt(self, prompt: str) -> list[dict[str, Any]]:
        """The /api/generate bodies that carried `prompt`: tests sharing one fake use unique prompts."""
        return [body for body in self.generate_requests if body.get("prompt") == prompt]


def wait_seconds(prompt: str) -> float:
    """The S of a `!wait=S` in `prompt` (0 without one)."""
    match = re.search(r"!wait=(\d+(?:\.\d+)?)", prompt)
    return float(match.group(1)) if match else 0.0


class FakeOllama:
    def __init__(
        self, models: dict[str, int] | None = None, port: int | None = None, parallel: int | None = None
    ) -> None:
        self.models = dict(DEFAULT_MODELS if models is None else models)
        self.port = port or free_port()
        self.parallel = parallel
        self.loaded: set[str] = set(self.models)  # what /api/ps lists
        self.seen = Observed()
        self._slots: dict[str, asyncio.Semaphore] = {}
        self.tags_delay = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._lock = threading.Lock()
        self._held_release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle (called from the test thread) -------------------------------------------------

    def start(self) -> FakeOllama:
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.result(timeout=10)
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def release_held(self) -> None:
        """Let every `!held` stream go on (this one and any later one)."""
        self._held_release.set()

    def wait_for(self, condition: Any, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.seen):
                return True
            time.sleep(0.01)
        return bool(condition(self.seen))

    def _serve(self, ready: Future[None]) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._startup())
        except Exception as error:
            ready.set_exception(error)
            return
        ready.set_result(None)
        self._loop.run_forever()
        self._loop.close()

    async def _startup(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._root)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/generate", self._generate)
        # Cancelling a handler whose client left is how Ollama behaves: it stops generating.
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=0.5, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- the GPU ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def generation(self, model: str, prompt: str) -> AsyncIterator[None]:
        """One generation: waits its turn (first in, first out) while `parallel` of the model run, then
        runs for its `!wait=S` (or, with `!hang`, until its client leaves). A client that leaves at any
        point is recorded in `seen.abandoned`."""
        if self.parallel is not None and model not in self._slots:
            self._slots[model] = asyncio.Semaphore(self.parallel)
        slot = self._slots.get(model) or contextlib.nullcontext()
        try:
            async with slot:
                self.seen.started.append(prompt)
                running = self.seen.generating[model] = self.seen.generating.get(model, 0) + 1
                self.seen.most_generating[model] = max(self.seen.most_generating.get(model, 0), running)
                try:
                    if "!hang" in prompt:
                        await asyncio.sleep(3600)
                    if wait_seconds(prompt):
                        await asyncio.sleep(wait_seconds(prompt))
                    yield
                finally:
                    self.seen.generating[model] -= 1
        except (asyncio.CancelledError, ConnectionResetError):
            self.seen.abandoned.append(prompt)
            raise

    # -- handlers --------------------------------------------------------------------------------

    async def _root(self, _request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.0"})

    async def _tags(self, _request: web.Request) -> web.Response:
        self.seen.tags_requests += 1
        if self.tags_delay:
            await asyncio.sleep(self.tags_delay)
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": "2026-11-01T10:00:00Z",
                "size": size,
                "digest": "sha256:" + "0" * 64,
                "details": {"format": "gguf", "family": "llama"},
            }
            for name, size in self.models.items()
        ]
        return web.json_response({"models": models})

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        self.seen.hosts.append(request.headers.get("Host", ""))
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": "invalid character in JSON"}, status=400)
        self.seen.generate_requests.append(body)
        model, prompt = body.get("model", ""), str(body.get("prompt", ""))
        if model not in self.models:
            return web.json_response({"error": f"model '{model}' not found"}, status=404)
        async with self.generation(model, prompt):
            return await self._generated(request, body, model, prompt)

    async def _generated(
        self, request: web.Request, body: dict[str, Any], model: str, prompt: str
    ) -> web.StreamResponse:
        if "!error500" in prompt:
            return web.json_response(
                {"error": "llama runner process has terminated: exit status 2"}, status=500
            )
        if "!busy" in prompt:
            return web.json_response(
                {"error": "server busy, please try again.  maximum pending requests exceeded"}, status=503
            )
        if "!bad" in prompt:
            return web.json_response({"error": "invalid options"}, status=400)
        words = answer_words(prompt)
        if prompt.startswith("!") and len(words) < 5:
            words += [" and", " so", " on"]
        if body.get("stream", True) is False:
            return web.json_response(
                {
                    "model": model,
                    "created_at": "2026-11-25T12:00:00Z",
                    "response": "".join(words),
                    **_final_fields(prompt, len(words)),
                }
            )
        return await self._stream(request, model, prompt, words)

    async def _stream(
        self, request: web.Request, model: str, prompt: str, words: list[str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        self.seen.streams_started += 1
        delay = 0.1 if "!slow" in prompt else 0.0
        if "!long" in prompt:
            words, delay = [f" w{i}" for i in range(200)], 0.05
        try:
            for index, word in enumerate(words):
                if index == 2 and ("!errorline" in prompt or "!cut" in prompt or "!stall" in prompt):
                    if "!errorline" in prompt:
                        await response.write(
                            ndjson_line({"error": "an error was encountered while running the model"})
                        )
                        return response
                    if "!stall" in prompt:
                        await asyncio.sleep(3600)
                    assert request.transport is not None
                    request.transport.close()
                    return response
                chunk = {
                    "model": model,
                    "created_at": "2026-11-25T12:00:00Z",
                    "response": word,
                    "done": False,
                }
                await response.write(ndjson_line(chunk))
                if index == 0 and "!held" in prompt:
                    await self._until_released()
                if delay:
                    await asyncio.sleep(delay)
            final = {"model": model, "created_at": "2026-11-25T12:00:00Z", "response": ""}
            await response.write(ndjson_line({**final, **_final_fields(prompt, len(words))}))
            await response.write_eof()
            self.seen.streams_finished += 1
        except (ConnectionResetError, asyncio.CancelledError):
            self.seen.streams_abandoned += 1
            raise
        return response

    async def _until_released(self, bound: float = 30.0) -> None:
        # Polls a threading.Event: the test thread sets it, and the loop must not block on it.
        deadline = time.monotonic() + bound
        while not self._held_release.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
