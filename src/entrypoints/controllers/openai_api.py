"""The OpenAI API behind the gateway, forwarded to Ollama's OpenAI-compatible endpoints.

Metered like `/chat`; gateway errors on `/v1/*` are shaped `{"error": {"message", "type", "code"}}` by
the exception handlers, so the `openai` SDK raises its own error classes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from litestar import Request, Response, get, post

from ollama_gate.entrypoints.asgi_answers import Answer
from ollama_gate.entrypoints.client_presence import cancel_on_disconnect
from ollama_gate.entrypoints.controllers.ollama_api import (
    allowed_model,
    as_response,
    listing,
    relay_inference,
)
from ollama_gate.entrypoints.request_context import container_of, identify_caller, identify_lister
from ollama_gate.services.passthrough import OPENAI

INFERENCE_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]


@post(
    INFERENCE_PATHS,
    status_code=200,
    before_request=identify_caller,
    middleware=[cancel_on_disconnect],
    summary="OpenAI-compatible inference",
)
async def openai_inference(request: Request[Any, Any, Any]) -> Answer:
    return await relay_inference(request, OPENAI)


@get("/v1/models", before_request=identify_lister, summary="Models on every Ollama server (OpenAI shape)")
async def openai_models(request: Request[Any, Any, Any]) -> Response[Any]:
    return await listing(request, "/v1/models", "data", "id")


@get("/v1/models/{model:path}", before_request=identify_lister, summary="One model (OpenAI shape)")
async def openai_model(request: Request[Any, Any, Any], model: str) -> Answer:
    name = model.lstrip("/")
    allowed_model(request, name)
    path = "/v1/models/" + quote(name, safe=":@")
    return as_response(await container_of(request).passthrough().forward("GET", path, None, name))


route_handlers = [openai_inference, openai_models, openai_model]
