"""/api/keys: create, list, revoke."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, delete, get, post

from ollama_gate.domain.access import require_someone, scope_user
from ollama_gate.domain.errors import Forbidden
from ollama_gate.domain.keys import ApiKey
from ollama_gate.entrypoints.request_body import optional_json_body
from ollama_gate.entrypoints.request_context import container_of, principal_of


class KeyFields(msgspec.Struct):
    user_id: str | None = None
    name: str | None = None
    plan: str | None = None


def key_view(key: ApiKey) -> dict[str, Any]:
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


async def _key_fields(request: Request[Any, Any, Any]) -> KeyFields:
    """`user_id` and `name` from the query string, or from a JSON body."""
    query = request.query_params
    fields = KeyFields(query.get("user_id"), query.get("name"), query.get("plan"))
    from_body = await optional_json_body(request, KeyFields)
    if from_body is not None:
        fields = KeyFields(
            fields.user_id or from_body.user_id, fields.name or from_body.name, fields.plan or from_body.plan
        )
    return fields


@post("/api/keys", status_code=201, summary="Create a key (its secret is shown only in this answer)")
async def create_key(request: Request[Any, Any, Any]) -> dict[str, Any]:
    principal = await principal_of(request)
    # Who may ask comes before what is asked: a stranger's body is never even read.
    require_someone(principal)
    fields = await _key_fields(request)
    user_id = scope_user(principal, fields.user_id, required_for_admin=True)
    assert user_id is not None  # scope_user requires it for admins; members get their own
    if fields.plan is not None and not principal.is_admin:
        raise Forbidden("only an admin may give a key a plan of its own")
    container = container_of(request)
    plan = container.plans().require_plan(fields.plan)
    issued = await container.keys().create(user_id, fields.name, plan)
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


@get("/api/keys", summary="List keys (never their secrets)")
async def list_keys(request: Request[Any, Any, Any], user_id: str | None = None) -> dict[str, Any]:
    principal = await principal_of(request)
    scope = scope_user(principal, user_id, required_for_admin=False)
    keys = await container_of(request).keys().list(scope)
    return {"keys": [key_view(key) for key in keys]}


@delete("/api/keys/{key_id:int}", status_code=200, summary="Revoke a key (idempotent)")
async def revoke_key(
    request: Request[Any, Any, Any], key_id: int, user_id: str | None = None
) -> dict[str, Any]:
    principal = await principal_of(request)
    scope = scope_user(principal, user_id, required_for_admin=False)
    key = await container_of(request).keys().revoke(key_id, scope)
    return {"id": key.id, "revoked": True}
