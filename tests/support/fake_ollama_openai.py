"""A fake Ollama with the rest of its API: /api/chat, embeddings, show, ps, model management, and the
OpenAI-compatible /v1 endpoints, all in Ollama's wire format.

It extends FakeOllama (same prompt steering on /api/generate) and records every request it sees, with
its Host header, so load-balancing tests can count where traffic went. On /api/chat and /v1/*:
- `!long`     (stream) 200 chunks, 50 ms apart: a long generation a client can walk away from
- `!slow`     (stream) 100 ms between chunks
- `!error500` 500 in the endpoint's error shape
- `!errorline` (stream, /api/chat) two chunks, then an `{"error": ...}` line without a done chunk
- `!held`     (stream, /api/chat) one chunk, then nothing until `release()` (at most 60 s): a chunk that
              reaches the client while this is still held was relayed before the answer was complete
- `!hang`, `!wait=S` on every inference path, as on /api/generate (see FakeOllama.generation)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.fake_ollama import FakeOllama, answer_words, ndjson_line

CREATED_AT = "2026-11-25T12:00:00Z"
EMBEDDING_SIZE = 4
DETAILS = {"format": "gguf", "family": "llama", "parameter_size": "1B", "quantization_level": "Q4_0"}


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    host: str


def _sse(value: dict[str, Any] | str) -> bytes:
    data = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def embedding_of(text: str) -> list[float]:
    """A deterministic vector per text, so tests can tell the answers apart."""
    return [float(len(text) + i) for i in range(EMBEDDING_SIZE)]


def _prompt_tokens(text: str) -> int:
    return len(text.split())


def _texts(body: dict[str, Any]) -> list[str]:
    """The texts to embed: `input` is one string or a list of them."""
    inputs = body.get("input", "")
    return [inputs] if isinstance(inputs, str) else [str(text) for text in inputs]


def _named_model(body: dict[str, Any]) -> str:
    # Ollama's model-management calls still accept the older `name`.
    return str(body.get("model") or body.get("name") or "")


class FakeOllamaServer(FakeOllama):
    def __init__(
        self, models: dict[str, int] | None = None, port: int | None = None, parallel: int | None = None
    ) -> None:
        super().__init__(models=models, port=port, parallel=parallel)
        self.calls: list[Call] = []
        self.received: list[tuple[str, bytes, Any]] = []  # (path, raw body, decoded) of JSON requests
        self.chat_bodies: list[dict[str, Any]] = []
        self.blobs: set[str] = set()
        self.abandoned = 0  # /api/chat and /v1 streams the client walked away from
        self._calls_lock = threading.Lock()
        self._released = threading.Event()

    def start(self) -> FakeOllamaServer:
        super().start()
        return self

    def __enter__(self) -> FakeOllamaServer:
        return self.start()

    def count(self, path: str, method: str = "POST") -> int:
        with self._calls_lock:
            return sum(1 for call in self.calls if call.path == path and call.method == method)

    def release(self) -> None:
        """Let every `!held` stream go on (this one and any later one)."""
        self._released.set()

    def wait_until(self, condition: Any, timeout: float = 10.0) -> bool:
        """Poll `condition()` every 10 ms, at most `timeout` seconds."""
        for _ in range(int(timeout / 0.01)):
            if condition():
                return True
            time.sleep(0.01)
        return bool(condition())

    def hosts(self) -> set[str]:
        with self._calls_lock:
            return {call.host for call in self.calls}

    # -- app ----------------------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        with self._calls_lock:
            self.calls.append(Call(request.method, request.path, request.headers.get("Host", "")))
        if request.method == "POST" and request.content_type == "application/json":
            raw = await request.read()  # cached: the handler reads it again
            with contextlib.suppress(ValueError):
                self.received.append((request.path, raw, json.loads(raw)))
        try:
            response: web.StreamResponse = await handler(request)
        except (AttributeError, TypeError, ValueError, KeyError) as error:
            # Ollama decodes a body into typed structs: a field of the wrong type is its 400, never a 500.
            message = f"json: cannot unmarshal request body: {error}"
            if request.path.startswith("/v1/"):
                return self._openai_error(400, message, "invalid_request_error")
            return web.json_response({"error": message}, status=400)
        return response

    def bodies(self, path: str, prompt: str) -> list[dict[str, Any]]:
        """The JSON bodies `path` received that carry `prompt` (as prompt, input or last message)."""
        return [body for seen, _, body in self.received if seen == path and prompt in json.dumps(body)]

    def raw_bodies(self, path: str, prompt: str) -> list[bytes]:
        """The same, byte for byte as they arrived."""
        return [raw for seen, raw, body in self.received if seen == path and prompt in json.dumps(body)]

    async def _startup(self) -> None:
        app = web.Application(middlewares=[self._record], client_max_size=64 * 1024 * 1024)
        routes = app.router
        # FakeOllama's own routes
        routes.add_get("/", self._root)
        routes.add_get("/api/version", self._version)
        routes.add_get("/api/tags", self._tags)
        routes.add_post("/api/generate", self._generate)
        # The rest of Ollama's API
        routes.add_post("/api/chat", self._chat)
        routes.add_post("/api/embed", self._embed)
        routes.add_post("/api/embeddings", self._embeddings)
        routes.add_post("/api/show", self._show)
        routes.add_get("/api/ps", self._ps)
        routes.add_post("/api/pull", self._pull)
        routes.add_post("/api/push", self._status_stream)
        routes.add_post("/api/create", self._status_stream)
        routes.add_post("/api/copy", self._copy)
        routes.add_delete("/api/delete", self._delete)
        routes.add_head("/api/blobs/{digest}", self._blob_exists)
        routes.add_post("/api/blobs/{digest}", self._blob_upload)
        # OpenAI-compatible
        routes.add_post("/v1/chat/completions", self._openai_chat)
        routes.add_post("/v1/completions", self._openai_completions)
        routes.add_post("/v1/embeddings", self._openai_embeddings)
        routes.add_get("/v1/models", self._openai_models)
        routes.add_get(r"/v1/models/{model:[\s\S]+}", self._openai_model)  # any name, newlines too
        # Cancelling a handler whose client left is how Ollama behaves: it stops generating.
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=0.5, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()

    # -- helpers ------------------------------------------------------------------------------------

    def _canonical(self, model: str) -> str:
        # Ollama resolves a name without a tag to its `:latest`.
        return model if ":" in model.rpartition("/")[2] or model in self.models else model + ":latest"

    def _missing(self, model: str) -> web.Response:
        return web.json_response({"error": f"model '{model}' not found"}, status=404)

    def _openai_error(self, status: int, message: str, kind: str) -> web.Response:
        error = {"message": message, "type": kind, "param": None, "code": None}
        return web.json_response({"error": error}, status=status)

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": "invalid character in JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "expected a JSON object"}, status=400)
        return body

    async def _known_model_body(
        self, request: web.Request, missing: Callable[[str], web.Response]
    ) -> tuple[dict[str, Any], str] | web.Response:
        """The JSON body and its `model`; or the answer to send instead: a bad body, or `missing(model)`
        for a model this server does not have."""
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        model = str(body.get("model", ""))
        if self._canonical(model) not in self.models:
            return missing(model)
        return body, model

    @contextlib.contextmanager
    def _counting_abandoned(self) -> Iterator[None]:
        """Count a stream the client walked away from, in `abandoned`."""
        try:
            yield
        except (ConnectionResetError, asyncio.CancelledError):
            self.abandoned += 1
            raise

    async def _ndjson_stream(
        self, request: web.Request, lines: Iterable[dict[str, Any]]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for line in lines:
            await response.write(ndjson_line(line))
        await response.write_eof()
        return response

    def _steered_words(self, prompt: str) -> tuple[list[str], float]:
        if "!long" in prompt:
            return [f" w{i}" for i in range(200)], 0.05
        return answer_words(prompt), 0.1 if "!slow" in prompt else 0.0

    # -- native -------------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        self.chat_bodies.append(body)
        model = str(body.get("model", ""))
        messages = body.get("messages") or [{"role": "user", "content": ""}]
        prompt = str(messages[-1].get("content", ""))
        if self._canonical(model) not in self.models:
            return self._missing(model)
        async with self.generation(self._canonical(model), prompt):
            return await self._chat_answer(request, body, model, prompt)

    async def _chat_answer(
        self, request: web.Request, body: dict[str, Any], model: str, prompt: str
    ) -> web.StreamResponse:
        if "!error500" in prompt:
            return web.json_response({"error": "llama runner process has terminated"}, status=500)
        words, delay = self._steered_words(prompt)
        final = {
            "model": model,
            "created_at": CREATED_AT,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "total_duration": 1_000_000,
            "load_duration": 100_000,
            "prompt_eval_count": _prompt_tokens(prompt),
            "prompt_eval_duration": 200_000,
            "eval_count": len(words),
            "eval_duration": 700_000,
        }
        if body.get("stream", True) is False:
            final["message"] = {"role": "assistant", "content": "".join(words)}
            return web.json_response(final)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        with self._counting_abandoned():
            for index, word in enumerate(words):
                if index == 2 and "!errorline" in prompt:
                    await response.write(
                        ndjson_line({"error": "an error was encountered while running the model"})
                    )
                    return response
                message = {"role": "assistant", "content": word}
                chunk = {"model": model, "created_at": CREATED_AT, "message": message, "done": False}
                await response.write(ndjson_line(chunk))
                if index == 0 and "!held" in prompt:
                    await asyncio.get_running_loop().run_in_executor(None, self._released.wait, 60)
                if delay:
                    await asyncio.sleep(delay)
            await response.write(ndjson_line(final))
            await response.write_eof()
        return response

    async def _embed(self, request: web.Request) -> web.Response:
        parsed = await self._known_model_body(request, self._missing)
        if isinstance(parsed, web.Response):
            return parsed
        body, model = parsed
        texts = _texts(body)
        async with self.generation(self._canonical(model), " ".join(texts)):
            pass
        return web.json_response(
            {
                "model": model,
                "embeddings": [embedding_of(text) for text in texts],
                "total_duration": 500_000,
                "load_duration": 10_000,
                "prompt_eval_count": sum(_prompt_tokens(text) for text in texts),
            }
        )

    async def _embeddings(self, request: web.Request) -> web.Response:
        parsed = await self._known_model_body(request, self._missing)
        if isinstance(parsed, web.Response):
            return parsed
        body, model = parsed
        async with self.generation(self._canonical(model), str(body.get("prompt", ""))):
            pass
        return web.json_response({"embedding": embedding_of(str(body.get("prompt", "")))})

    async def _show(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        model = _named_model(body)
        if self._canonical(model) not in self.models:
            return self._missing(model)
        return web.json_response(
            {
                "modelfile": f"FROM {model}\n",
                "parameters": "stop <|im_end|>",
                "template": "{{ .Prompt }}",
                "details": DETAILS,
                "model_info": {"general.architecture": "llama", "general.parameter_count": 1_000_000},
                "capabilities": ["completion"],
                "modified_at": "2026-11-01T10:00:00Z",
            }
        )

    async def _ps(self, _request: web.Request) -> web.Response:
        loaded = [
            {
                "name": name,
                "model": name,
                "size": size,
                "digest": "sha256:" + "1" * 64,
                "details": DETAILS,
                "expires_at": "2026-11-25T12:05:00Z",
                "size_vram": 0,
                "context_length": 4096,
            }
            for name, size in self.models.items()
            if name in self.loaded
        ]
        return web.json_response({"models": loaded})

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        model = _named_model(body)
        steps: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        steps += [
            {"status": "pulling aaaa", "digest": "sha256:aaaa", "total": 300, "completed": done}
            for done in (100, 200, 300)
        ]
        steps += [
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        self.models[model] = 1_000
        if body.get("stream", True) is False:
            return web.json_response({"status": "success"})
        return await self._ndjson_stream(request, steps)

    async def _status_stream(self, request: web.Request) -> web.StreamResponse:
        return await self._ndjson_stream(request, ({"status": status} for status in ("working", "success")))

    async def _copy(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        source = str(body.get("source", ""))
        if source not in self.models:
            return self._missing(source)
        self.models[str(body.get("destination"))] = self.models[source]
        return web.Response(status=200)

    async def _delete(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        model = _named_model(body)
        if self.models.pop(model, None) is None:
            return self._missing(model)
        return web.Response(status=200)

    async def _blob_exists(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if request.match_info["digest"] in self.blobs else 404)

    async def _blob_upload(self, request: web.Request) -> web.Response:
        await request.read()
        self.blobs.add(request.match_info["digest"])
        return web.Response(status=201)

    # -- OpenAI-compatible --------------------------------------------------------------------------

    def _openai_missing(self, model: str) -> web.Response:
        return self._openai_error(404, f'model "{model}" not found, try pulling it first', "not_found_error")

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        parsed = await self._known_model_body(request, self._openai_missing)
        if isinstance(parsed, web.Response):
            return parsed
        body, model = parsed
        messages = body.get("messages") or [{"content": ""}]
        return await self._openai_answer(
            request, body, model, str(messages[-1].get("content", "")), chat=True
        )

    async def _openai_completions(self, request: web.Request) -> web.StreamResponse:
        parsed = await self._known_model_body(request, self._openai_missing)
        if isinstance(parsed, web.Response):
            return parsed
        body, model = parsed
        return await self._openai_answer(request, body, model, str(body.get("prompt", "")), chat=False)

    async def _openai_answer(
        self, request: web.Request, body: dict[str, Any], model: str, prompt: str, *, chat: bool
    ) -> web.StreamResponse:
        async with self.generation(self._canonical(model), prompt):
            return await self._openai_generated(request, body, model, prompt, chat=chat)

    async def _openai_generated(
        self, request: web.Request, body: dict[str, Any], model: str, prompt: str, *, chat: bool
    ) -> web.StreamResponse:
        if "!error500" in prompt:
            return self._openai_error(500, "llama runner process has terminated", "api_error")
        words, delay = self._steered_words(prompt)
        usage = {
            "prompt_tokens": _prompt_tokens(prompt),
            "completion_tokens": len(words),
            "total_tokens": _prompt_tokens(prompt) + len(words),
        }
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": "chatcmpl-42" if chat else "cmpl-42", "created": 1_764_072_000, "model": model}
        head["system_fingerprint"] = "fp_ollama"
        if not body.get("stream"):
            text = "".join(words)
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            return web.json_response({**head, "object": kind, "choices": [choice], "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        with self._counting_abandoned():
            for index, word in enumerate([*words, ""]):
                last = index == len(words)
                choice = {"index": 0, "finish_reason": "stop" if last else None}
                choice.update({"delta": {"role": "assistant", "content": word}} if chat else {"text": word})
                await response.write(_sse({**head, "object": kind + ".chunk", "choices": [choice]}))
                if delay:
                    await asyncio.sleep(delay)
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(_sse({**head, "object": kind + ".chunk", "choices": [], "usage": usage}))
            await response.write(_sse("[DONE]"))
            await response.write_eof()
        return response

    async def _openai_embeddings(self, request: web.Request) -> web.Response:
        parsed = await self._known_model_body(request, self._openai_missing)
        if isinstance(parsed, web.Response):
            return parsed
        body, model = parsed
        texts = _texts(body)
        async with self.generation(self._canonical(model), " ".join(texts)):
            pass
        base64_wanted = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector = embedding_of(text)
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                if base64_wanted
                else vector
            )
            data.append({"object": "embedding", "embedding": encoded, "index": index})
        tokens = sum(_prompt_tokens(text) for text in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.json_response({"object": "list", "data": data, "model": model, "usage": usage})

    def _openai_model_entry(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 1_764_000_000, "owned_by": "library"}

    async def _openai_models(self, _request: web.Request) -> web.Response:
        entries = [self._openai_model_entry(name) for name in self.models]
        return web.json_response({"object": "list", "data": entries})

    async def _openai_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name not in self.models:
            return self._openai_missing(name)
        return web.json_response(self._openai_model_entry(name))
