"""The OpenAI API behind the gateway, forwarded to Ollama's OpenAI-compatible endpoints.

Metered like `/chat`; gateway errors on `/v1/*` are shaped `{"error": {"message", "type", "code"}}` by
the exception handlers, so the `openai` SDK raises its own error classes.
"""

from __future__ import annotations

from typing import Any, TypedDict
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
from ollama_gate.entrypoints.direct_routes import direct
from ollama_gate.entrypoints.openapi_contract import (
    OPENAI_BODIES,
    OPENAI_SHAPE,
    SSE,
    answer,
    documented,
    errors,
)
from ollama_gate.entrypoints.request_context import container_of, identify_caller, identify_lister
from ollama_gate.services.passthrough import OPENAI

GENERATION_PATHS = ["/v1/chat/completions", "/v1/completions"]

# Besides the gateway's refusals, Ollama's own errors in OpenAI's shape, as it sent them.
UPSTREAM_ERRORS = (400, 404, 500, 502, 503, 504)
INFERENCE_ERRORS = errors(OPENAI_SHAPE, *UPSTREAM_ERRORS, 401, 403, 413, 429)
LISTING_ERRORS = errors(OPENAI_SHAPE, 401, 429, 502, 503, 504)
AN_OBJECT = dict[str, Any]


class ModelList(TypedDict):
    object: str
    data: list[dict[str, Any]]


@post(
    GENERATION_PATHS,
    status_code=200,
    before_request=identify_caller,
    middleware=[cancel_on_disconnect],
    summary="OpenAI-compatible completions (metered; server-sent events with `stream: true`)",
    responses=answer(AN_OBJECT, description="The completion (without `stream: true`)") | INFERENCE_ERRORS,
    opt=documented(OPENAI_BODIES, streamed=[SSE], metered=True) | direct(),
)
async def openai_generation(request: Request[Any, Any, Any]) -> Answer:
    return await relay_inference(request, OPENAI)


@post(
    "/v1/embeddings",
    status_code=200,
    before_request=identify_caller,
    middleware=[cancel_on_disconnect],
    summary="OpenAI-compatible embeddings (metered)",
    responses=answer(AN_OBJECT, description="The embeddings") | INFERENCE_ERRORS,
    opt=documented(OPENAI_BODIES, metered=True) | direct(),
)
async def openai_embedding(request: Request[Any, Any, Any]) -> Answer:
    return await relay_inference(request, OPENAI)


@get(
    "/v1/models",
    before_request=identify_lister,
    summary="Models on every Ollama server (OpenAI shape)",
    responses=answer(ModelList) | LISTING_ERRORS,
)
async def openai_models(request: Request[Any, Any, Any]) -> Response[Any]:
    return await listing(request, "/v1/models", "data", "id")


@get(
    "/v1/models/{model:path}",
    before_request=identify_lister,
    summary="One model (OpenAI shape)",
    responses=answer(AN_OBJECT) | errors(OPENAI_SHAPE, *UPSTREAM_ERRORS, 401, 403, 429),
)
async def openai_model(request: Request[Any, Any, Any], model: str) -> Answer:
    name = model.lstrip("/")
    allowed_model(request, name)
    path = "/v1/models/" + quote(name, safe=":@")
    return as_response(await container_of(request).passthrough().forward("GET", path, None, name))


route_handlers = [openai_generation, openai_embedding, openai_models, openai_model]
