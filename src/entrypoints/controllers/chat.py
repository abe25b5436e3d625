"""POST /chat and POST /chat/stream."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

import msgspec
from litestar import Request, post

from ollama_gate.domain.chat import ChatRequest
from ollama_gate.entrypoints.asgi_answers import JSON, NDJSON, BodyAnswer, StreamAnswer
from ollama_gate.entrypoints.client_presence import cancel_on_disconnect
from ollama_gate.entrypoints.direct_routes import direct
from ollama_gate.entrypoints.openapi_contract import GATEWAY_SHAPE, answer, documented, errors, struct_body
from ollama_gate.entrypoints.rate_limit_headers import rate_limit_head
from ollama_gate.entrypoints.request_body import json_body
from ollama_gate.entrypoints.request_context import admit, container_of, identify_caller


class ChatBody(msgspec.Struct):
    """A chat request. Unknown fields are ignored."""

    message: Annotated[str, msgspec.Meta(min_length=1, description="The prompt (required, non-empty).")]
    model: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    system: str | None = None
    options: dict[str, Any] | None = None

    def to_request(self) -> ChatRequest:
        return ChatRequest(self.message, self.model, self.system, self.options)


class ChatAnswer(TypedDict):
    user: str
    tier: str
    plan: str
    response: dict[str, Any]  # Ollama's answer, without its `context`


# Before the first chunk, errors are ordinary answers; after it, a last line `{"error": ..., "done": true}`.
CHAT_ERRORS = errors(GATEWAY_SHAPE, 400, 401, 403, 404, 413, 429, 502, 503, 504)
# The handlers decode their body themselves (Litestar's `data` costs a signature model per request).
CHAT_BODY = struct_body(ChatBody, {"message": "Why is the sky blue?", "model": "smollm:latest"})


@post(
    "/chat",
    status_code=200,
    before_request=identify_caller,
    middleware=[cancel_on_disconnect],
    summary="Chat (one JSON answer)",
    responses=answer(ChatAnswer) | CHAT_ERRORS,
    opt=documented(CHAT_BODY, metered=True) | direct(),
)
async def chat(request: Request[Any, Any, Any]) -> BodyAnswer:
    service = container_of(request).chat()
    asked = (await json_body(request, ChatBody)).to_request()
    ticket = await admit(request, service.model_of(asked))
    body = await service.complete(ticket, asked, "/chat")
    return BodyAnswer(body, JSON, rate_limit_head(ticket.admission))


@post(
    "/chat/stream",
    status_code=200,
    before_request=identify_caller,
    middleware=[cancel_on_disconnect],
    summary="Chat (streamed as NDJSON)",
    responses=answer(dict[str, Any], media_type=NDJSON, description="Ollama's chunks, one per line")
    | CHAT_ERRORS,
    opt=documented(CHAT_BODY, metered=True) | direct(),
)
async def chat_stream(request: Request[Any, Any, Any]) -> StreamAnswer:
    service = container_of(request).chat()
    asked = (await json_body(request, ChatBody)).to_request()
    ticket = await admit(request, service.model_of(asked))
    relay = await service.open_stream(ticket, asked, "/chat/stream")
    return StreamAnswer(relay.lines(), NDJSON, rate_limit_head(ticket.admission), relay.abandon)
