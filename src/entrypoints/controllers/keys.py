"""/api/keys: create, list, revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict

import msgspec
from litestar import Request, delete, get, post
from litestar.openapi.spec import OpenAPIType, Schema

from ollama_gate.domain.access import require_someone, scope_user
from ollama_gate.domain.errors import Forbidden
from ollama_gate.domain.keys import ApiKey
from ollama_gate.entrypoints.openapi_contract import (
    GATEWAY_SHAPE,
    KeyIdPath,
    KeyNameQuery,
    PlanQuery,
    UserIdQuery,
    documented,
    errors,
)
from ollama_gate.entrypoints.request_body import optional_json_body
from ollama_gate.entrypoints.request_context import container_of, principal_of


class KeyFields(msgspec.Struct):
    user_id: str | None = None
    name: str | None = None
    plan: str | None = None


class KeyView(TypedDict):
    id: int
    user_id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    active: bool
    plan: str | None


class KeyList(TypedDict):
    keys: list[KeyView]


class CreatedKey(TypedDict):
    id: int
    user_id: str
    name: str
    key: str  # the secret: shown in this answer only
    prefix: str
    created_at: datetime
    plan: str | None


class RevokedKey(TypedDict):
    id: int
    revoked: bool


# The same fields as the query string; a query parameter wins over the body's.
KEY_FIELDS_BODY = Schema(
    type=OpenAPIType.OBJECT,
    properties={
        "user_id": Schema(type=OpenAPIType.STRING, description="1-128 of letters, digits, `_ . @ -`"),
        "name": Schema(type=OpenAPIType.STRING, description="At most 100 characters (default `default`)"),
        "plan": Schema(type=OpenAPIType.STRING, description="A plan of the key's own (admins only)"),
    },
    description="Optional: the fields may come in the query string instead",
    examples=[{"user_id": "alice", "name": "laptop"}],
)


def key_view(key: ApiKey) -> KeyView:
    return {
        "id": key.id,
        "user_id": key.user_id,
        "name": key.name,
        "prefix": key.prefix,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "revoked_at": key.revoked_at,
        "active": key.active,
        "plan": key.plan,
    }


async def _key_fields(request: Request[Any, Any, Any], query: KeyFields) -> KeyFields:
    """`user_id`, `name` and `plan` from the query string, else from a JSON body."""
    fields = query
    from_body = await optional_json_body(request, KeyFields)
    if from_body is not None:
        fields = KeyFields(
            fields.user_id or from_body.user_id, fields.name or from_body.name, fields.plan or from_body.plan
        )
    return fields


@post(
    "/api/keys",
    status_code=201,
    summary="Create a key (its secret is shown only in this answer)",
    responses=errors(GATEWAY_SHAPE, 400, 401, 403, 404, 413, 503),
    opt=documented(KEY_FIELDS_BODY, required=False),
)
async def create_key(
    request: Request[Any, Any, Any],
    user_id: UserIdQuery = None,
    name: KeyNameQuery = None,
    plan: PlanQuery = None,
) -> CreatedKey:
    principal = await principal_of(request)
    # Who may ask comes before what is asked: a stranger's body is never even read.
    require_someone(principal)
    fields = await _key_fields(request, KeyFields(user_id, name, plan))
    owner = scope_user(principal, fields.user_id, required_for_admin=True)
    assert owner is not None  # scope_user requires it for admins; members get their own
    if fields.plan is not None and not principal.is_admin:
        raise Forbidden("only an admin may give a key a plan of its own")
    container = container_of(request)
    key_plan = container.plans().require_plan(fields.plan)
    issued = await container.keys().create(owner, fields.name, key_plan)
    key = issued.key
    return {
        "id": key.id,
        "user_id": key.user_id,
        "name": key.name,
        "key": issued.secret,
        "prefix": key.prefix,
        "created_at": key.created_at,
        "plan": key.plan,
    }


@get(
    "/api/keys",
    summary="List keys (never their secrets)",
    responses=errors(GATEWAY_SHAPE, 400, 401, 403, 503),
)
async def list_keys(request: Request[Any, Any, Any], user_id: UserIdQuery = None) -> KeyList:
    principal = await principal_of(request)
    scope = scope_user(principal, user_id, required_for_admin=False)
    keys = await container_of(request).keys().list(scope)
    return {"keys": [key_view(key) for key in keys]}


@delete(
    "/api/keys/{key_id:int}",
    status_code=200,
    summary="Revoke a key (idempotent)",
    responses=errors(GATEWAY_SHAPE, 400, 401, 403, 404, 503),
)
async def revoke_key(
    request: Request[Any, Any, Any], key_id: KeyIdPath, user_id: UserIdQuery = None
) -> RevokedKey:
    principal = await principal_of(request)
    scope = scope_user(principal, user_id, required_for_admin=False)
    key = await container_of(request).keys().revoke(key_id, scope)
    return {"id": key.id, "revoked": True}
