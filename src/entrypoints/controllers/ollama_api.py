"""Ollama's own API behind the gateway: the paths its clients call, answered as Ollama answers them.

Inference (`/api/generate`, `/api/chat`, `/api/embed`, `/api/embeddings`) is metered like `/chat`;
listings are not; model management is for admins only. Gateway errors on these paths are shaped
`{"error": "..."}` by the exception handlers, so Ollama's clients raise their usual error.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get, head, post

from ollama_gate.domain.errors import Forbidden
from ollama_gate.entrypoints.asgi_answers import JSON, Answer, BodyAnswer, StreamAnswer
from ollama_gate.entrypoints.client_presence import cancel_on_disconnect
from ollama_gate.entrypoints.rate_limit_headers import rate_limit_headers
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

INFERENCE_PATHS = ["/api/generate", "/api/chat", "/api/embed", "/api/embeddings"]
MANAGEMENT_PATHS = ["/api/pull", "/api/push", "/api/create", "/api/copy"]
ADMINS_ONLY = "model management is for admins only"


def as_response(relayed: Relayed, headers: dict[str, str] | None = None) -> Answer:
    """The upstream's status, content type and body (or stream) as they came."""
    content_type = relayed.content_type or JSON
    if relayed.stream is not None:
        return StreamAnswer(relayed.stream, content_type, headers, relayed.abandon)
    return BodyAnswer(relayed.body, content_type, headers, relayed.status)


async def relay_inference(request: Request[Any, Any, Any], dialect: Dialect) -> Answer:
    """Read the body, take a slot of the caller's quota, forward; rate-limit headers on the answer."""
    body = await request.body()
    model = model_named_in(body)
    ticket = await admit(request, model)
    relayed = (
        await container_of(request).passthrough().infer(ticket, dialect, request.scope["path"], body, model)
    )
    return as_response(relayed, rate_limit_headers(ticket.admission))


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
    INFERENCE_PATHS,
    status_code=200,
    before_request=identify_caller,
    middleware=[cancel_on_disconnect],
    summary="Ollama inference (metered)",
)
async def ollama_inference(request: Request[Any, Any, Any]) -> Answer:
    return await relay_inference(request, OLLAMA)


@get("/api/tags", before_request=identify_lister, summary="Models on every Ollama server")
async def ollama_tags(request: Request[Any, Any, Any]) -> Response[Any]:
    return await listing(request, "/api/tags", "models", "name")


@get("/api/ps", before_request=identify_lister, summary="Models loaded on every Ollama server")
async def ollama_ps(request: Request[Any, Any, Any]) -> Response[Any]:
    return await listing(request, "/api/ps", "models", "name")


@get("/api/version", before_request=identify_lister, summary="Ollama's version")
async def ollama_version(request: Request[Any, Any, Any]) -> Answer:
    return as_response(await container_of(request).passthrough().forward("GET", "/api/version", None, None))


@post("/api/show", status_code=200, before_request=identify_lister, summary="A model's details")
async def ollama_show(request: Request[Any, Any, Any]) -> Answer:
    body = await request.body()
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
    body = await request.body()
    model = managed_model_in(body)
    path = request.scope["path"]
    # Sticky: an upload, then the create that uses it, must reach the same server.
    relayed = await container_of(request).passthrough().forward(method, path, body, model, sticky=True)
    return as_response(relayed)


@post(
    MANAGEMENT_PATHS,
    status_code=200,
    middleware=[cancel_on_disconnect],
    summary="Model management (admins only; pull progress streamed)",
)
async def ollama_manage(request: Request[Any, Any, Any]) -> Answer:
    return await _manage(request, "POST")


@delete(
    "/api/delete", status_code=200, middleware=[cancel_on_disconnect], summary="Delete a model (admins only)"
)
async def ollama_delete(request: Request[Any, Any, Any]) -> Answer:
    return await _manage(request, "DELETE")


@post(
    "/api/blobs/{digest:str}",
    status_code=201,
    request_max_body_size=None,
    middleware=[cancel_on_disconnect],
    summary="Upload a model blob (admins only)",
)
async def ollama_blob_upload(request: Request[Any, Any, Any], digest: str) -> Answer:
    await require_admin(request)
    relayed = await (
        container_of(request)
        .passthrough()
        .forward("POST", f"/api/blobs/{digest}", request.stream(), None, sticky=True)
    )
    return as_response(relayed)


@head("/api/blobs/{digest:str}", summary="Whether a model blob exists (admins only)")
async def ollama_blob_exists(request: Request[Any, Any, Any], digest: str) -> Response[None]:
    await require_admin(request)
    relayed = await (
        container_of(request).passthrough().forward("HEAD", f"/api/blobs/{digest}", None, None, sticky=True)
    )
    return Response(None, status_code=relayed.status)


route_handlers = [
    ollama_inference,
    ollama_tags,
    ollama_ps,
    ollama_version,
    ollama_show,
    ollama_root,
    ollama_root_head,
    ollama_manage,
    ollama_delete,
    ollama_blob_upload,
    ollama_blob_exists,
]
