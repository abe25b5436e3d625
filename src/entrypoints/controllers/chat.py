"""POST /chat and POST /chat/stream."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, post
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

from ollama_gate.domain.chat import ChatRequest
from ollama_gate.entrypoints.rate_limit_headers import rate_limit_headers
from ollama_gate.entrypoints.request_context import caller_of, container_of, identify_caller

NDJSON = "application/x-ndjson"


class ChatBody(msgspec.Struct):
    """A chat request. Unknown fields are ignored."""

    message: Annotated[str, msgspec.Meta(min_length=1, description="The prompt (required, non-empty).")]
    model: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    system: str | None = None
    options: dict[str, Any] | None = None

    def to_request(self) -> ChatRequest:
        return ChatRequest(self.message, self.model, self.system, self.options)


@post("/chat", status_code=200, guards=[identify_caller], summary="Chat (one JSON answer)")
async def chat(request: Request[Any, Any, Any], data: ChatBody) -> Response[bytes]:
    container = container_of(request)
    caller = caller_of(request)
    decision = request.state.decision = await container.gatekeeper().admit(caller)
    body = await container.chat().complete(caller, data.to_request(), "/chat")
    return Response(body, media_type="application/json", headers=rate_limit_headers(decision))


@post("/chat/stream", status_code=200, guards=[identify_caller], summary="Chat (streamed as NDJSON)")
async def chat_stream(request: Request[Any, Any, Any], data: ChatBody) -> Stream:
    container = container_of(request)
    caller = caller_of(request)
    decision = request.state.decision = await container.gatekeeper().admit(caller)
    relay = await container.chat().open_stream(caller, data.to_request(), "/chat/stream")
    return Stream(
        relay.lines(),
        media_type=NDJSON,
        headers=rate_limit_headers(decision),
        background=BackgroundTask(relay.abandon),
    )
