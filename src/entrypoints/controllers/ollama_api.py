"""Ollama's own API behind the gateway: the paths its clients call, answered as Ollama answers them.

Inference (`/api/generate`, `/api/chat`, `/api/embed`, `/api/embeddings`) is metered like `/chat`;
listings are not; model management is for admins only. Gateway errors on these paths are shaped
`{"error": "..."}` by the exception handlers, so Ollama's clients raise their usual error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

from litestar import Request, Response, delete, get, head, post

from ollama_gate.domain.errors import Forbidden
from ollama_gate.entrypoints.asgi_answers import JSON, Answer, BodyAnswer, Header, StreamAnswer
from ollama_gate.entrypoints.client_presence import cancel_on_disconnect
from ollama_gate.entrypoints.direct_routes import direct
from ollama_gate.entrypoints.openapi_contract import (
    BLOB_BODY,
    NDJSON,
    OCTET_STREAM,
    OLLAMA_BODIES,
    OLLAMA_MANAGEMENT_BODY,
    OLLAMA_SHAPE,
    OLLAMA_SHOW_BODY,
    answer,
    documented,
    errors,
)
from ollama_gate.entrypoints.rate_limit_headers import rate_limit_head
from ollama_gate.entrypoints.request_body import read_body
from ollama_gate.entrypoints.request_context import (
    admit,
    caller_of,
    container_of,
    identify_caller,
    identify_lister,
    principal_of,
)
from ollama_gate.services.passthrough import (
    OLLAMA,
    Dialect,
    Relayed,
    listing_for,
    managed_model_in,
    model_named_in,
)

GENERATION_PATHS = ["/api/generate", "/api/chat"]
EMBEDDING_PATHS = ["/api/embed", "/api/embeddings"]
MANAGEMENT_PATHS = ["/api/pull", "/api/push", "/api/create"]
ADMINS_ONLY = "model management is for admins only"

# What these routes answer besides their success: the gateway's own refusals, and Ollama's errors as it
# sent them (400, 404 for an unknown model, 500, 503 when its queue is full).
UPSTREAM_ERRORS = (400, 404, 500, 502, 503, 504)
INFERENCE_ERRORS = errors(OLLAMA_SHAPE, *UPSTREAM_ERRORS, 401, 403, 413, 429)
LISTING_ERRORS = errors(OLLAMA_SHAPE, 401, 429, 502, 503, 504)
MANAGEMENT_ERRORS = errors(OLLAMA_SHAPE, *UPSTREAM_ERRORS, 401, 403, 413)
AN_OBJECT = dict[str, Any]
HEAD_ERRORS = errors(None, 400, 401, 403, 404, 500, 502, 503, 504)  # a HEAD answer has no body


class ModelList(TypedDict):
    models: list[dict[str, Any]]


class Version(TypedDict):
    version: str


def as_response(relayed: Relayed, headers: Sequence[Header] = ()) -> Answer:
    """The upstream's status, content type and body (or stream) as they came. A body without a content
    type is taken for JSON, but an empty one stays without: it is no JSON document (a copy's 200)."""
    content_type = relayed.content_type or (JSON if relayed.body or relayed.stream else "")
    if relayed.stream is not None:
        return StreamAnswer(relayed.stream, content_type, headers, relayed.abandon)
    return BodyAnswer(relayed.body, content_type, headers, relayed.status)


async def relay_inference(request: Request[Any, Any, Any], dialect: Dialect) -> Answer:
    """Read the body, take a slot of the caller's quota, forward; rate-limit headers on the answer."""
    body = await read_body(request)
    model = model_named_in(body)
    ticket = await admit(request, model)
    relayed = (
        await container_of(request).passthrough().infer(ticket, dialect, request.scope["path"], body, model)
    )
    return as_response(relayed, rate_limit_head(ticket.admission))


async def listing(
    request: Request[Any, Any, Any], path: str, list_field: str, id_field: str
) -> Response[Any]:
    """Every server's listing merged, with only the models the caller's plan allows."""
    container = container_of(request)
    body = await container.passthrough().union(path, list_field, id_field)
    plan = container.gatekeeper().plan_of(caller_of(request))
    return Response(listing_for(plan, body, list_field, id_field), media_type="application/json")


def allowed_model(request: Request[Any, Any, Any], model: str | None) -> None:
    """A model outside the caller's plan is 403 on the paths that describe one, as on inference."""
    container_of(request).gatekeeper().check_model(caller_of(request), model)


async def require_admin(request: Request[Any, Any, Any]) -> None:
    if not (await principal_of(request)).is_admin:
        raise Forbidden(ADMINS_ONLY)


@post(
    GENERATION_PATHS,
    status_code=200,
    before_request=identify_caller,
    middleware=[cancel_on_disconnect],
    summary="Ollama generation (metered; streamed unless `stream` is false)",
    responses=answer(AN_OBJECT, description="Ollama's answer (`stream: false`)") | INFERENCE_ERRORS,
    opt=documented(OLLAMA_BODIES, streamed=[NDJSON], metered=True) | direct(),
)
async def ollama_generation(request: Request[Any, Any, Any]) -> Answer:
    return await relay_inference(request, OLLAMA)


@post(
    EMBEDDING_PATHS,
    status_code=200,
    before_request=identify_caller,
    middleware=[cancel_on_disconnect],
    summary="Ollama embeddings (metered)",
    responses=answer(AN_OBJECT, description="Ollama's answer") | INFERENCE_ERRORS,
    opt=documented(OLLAMA_BODIES, metered=True) | direct(),
)
async def ollama_embedding(request: Request[Any, Any, Any]) -> Answer:
    return await relay_inference(request, OLLAMA)


@get(
    "/api/tags",
    before_request=identify_lister,
    summary="Models on every Ollama server",
    responses=answer(ModelList) | LISTING_ERRORS,
)
async def ollama_tags(request: Request[Any, Any, Any]) -> Response[Any]:
    return await listing(request, "/api/tags", "models", "name")


@get(
    "/api/ps",
    before_request=identify_lister,
    summary="Models loaded on every Ollama server",
    responses=answer(ModelList) | LISTING_ERRORS,
)
async def ollama_ps(request: Request[Any, Any, Any]) -> Response[Any]:
    return await listing(request, "/api/ps", "models", "name")


@get(
    "/api/version",
    before_request=identify_lister,
    summary="Ollama's version",
    responses=answer(Version) | LISTING_ERRORS,
)
async def ollama_version(request: Request[Any, Any, Any]) -> Answer:
    return as_response(await container_of(request).passthrough().forward("GET", "/api/version", None, None))


@post(
    "/api/show",
    status_code=200,
    before_request=identify_lister,
    summary="A model's details",
    responses=answer(AN_OBJECT) | errors(OLLAMA_SHAPE, *UPSTREAM_ERRORS, 401, 403, 413, 429),
    opt=documented(OLLAMA_SHOW_BODY),
)
async def ollama_show(request: Request[Any, Any, Any]) -> Answer:
    body = await read_body(request)
    model = model_named_in(body)
    allowed_model(request, model)
    return as_response(await container_of(request).passthrough().forward("POST", "/api/show", body, model))


@get("/", before_request=identify_lister, summary="'Ollama is running'", include_in_schema=False)
async def ollama_root(request: Request[Any, Any, Any]) -> Answer:
    return as_response(await container_of(request).passthrough().forward("GET", "/", None, None))


@head("/", before_request=identify_lister, include_in_schema=False)
async def ollama_root_head(request: Request[Any, Any, Any]) -> Response[None]:
    relayed = await container_of(request).passthrough().forward("HEAD", "/", None, None)
    return Response(None, status_code=relayed.status, media_type=relayed.content_type.split(";")[0] or None)


async def _manage(request: Request[Any, Any, Any], method: str) -> Answer:
    await require_admin(request)
    body = await read_body(request)
    model = managed_model_in(body)
    path = request.scope["path"]
    # Sticky: an upload, then the create that uses it, must reach the same server.
    relayed = await container_of(request).passthrough().forward(method, path, body, model, sticky=True)
    return as_response(relayed)


@post(
    MANAGEMENT_PATHS,
    status_code=200,
    middleware=[cancel_on_disconnect],
    summary="Model management (admins only; progress streamed unless `stream` is false)",
    responses=answer(AN_OBJECT, description="Ollama's answer (`stream: false`)") | MANAGEMENT_ERRORS,
    opt=documented(OLLAMA_MANAGEMENT_BODY, streamed=[NDJSON]),
)
async def ollama_manage(request: Request[Any, Any, Any]) -> Answer:
    return await _manage(request, "POST")


@post(
    "/api/copy",
    status_code=200,
    middleware=[cancel_on_disconnect],
    summary="Copy a model (admins only)",
    responses=answer(None, description="Copied (an empty body)") | MANAGEMENT_ERRORS,
    opt=documented(OLLAMA_MANAGEMENT_BODY),
)
async def ollama_copy(request: Request[Any, Any, Any]) -> Answer:
    return await _manage(request, "POST")


@delete(
    "/api/delete",
    status_code=200,
    middleware=[cancel_on_disconnect],
    summary="Delete a model (admins only)",
    responses=answer(None, description="Deleted (an empty body)") | MANAGEMENT_ERRORS,
    opt=documented(OLLAMA_MANAGEMENT_BODY),
)
async def ollama_delete(request: Request[Any, Any, Any]) -> Answer:
    return await _manage(request, "DELETE")


@post(
    "/api/blobs/{digest:str}",
    status_code=201,
    request_max_body_size=None,
    middleware=[cancel_on_disconnect],
    summary="Upload a model blob (admins only)",
    responses=answer(None, status=201, description="Stored (an empty body)")
    | errors(OLLAMA_SHAPE, *UPSTREAM_ERRORS, 401, 403),
    opt=documented(BLOB_BODY, body_type=OCTET_STREAM),
)
async def ollama_blob_upload(request: Request[Any, Any, Any], digest: str) -> Answer:
    await require_admin(request)
    relayed = await (
        container_of(request)
        .passthrough()
        .forward("POST", f"/api/blobs/{digest}", request.stream(), None, sticky=True)
    )
    return as_response(relayed)


@head(
    "/api/blobs/{digest:str}",
    summary="Whether a model blob exists (admins only)",
    responses=answer(None, description="It exists") | HEAD_ERRORS,
)
async def ollama_blob_exists(request: Request[Any, Any, Any], digest: str) -> Response[None]:
    await require_admin(request)
    relayed = await (
        container_of(request).passthrough().forward("HEAD", f"/api/blobs/{digest}", None, None, sticky=True)
    )
    return Response(None, status_code=relayed.status)


route_handlers = [
    ollama_generation,
    ollama_embedding,
    ollama_tags,
    ollama_ps,
    ollama_version,
    ollama_show,
    ollama_root,
    ollama_root_head,
    ollama_manage,
    ollama_copy,
    ollama_delete,
    ollama_blob_upload,
    ollama_blob_exists,
]
