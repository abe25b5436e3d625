"""/api/plans, /api/users and /api/me: the plans, who is on which, and what a caller has left."""

from __future__ import annotations

from typing import Any

from litestar import Request, delete, get, patch, put

from ollama_gate.domain.errors import Forbidden, InvalidRequest
from ollama_gate.domain.keys import validate_user_id
from ollama_gate.domain.plans import Plan
from ollama_gate.domain.quota import LimitKind
from ollama_gate.domain.users import UserRecord
from ollama_gate.entrypoints.request_body import json_body
from ollama_gate.entrypoints.request_context import caller_of, container_of, identify_caller, principal_of

ADMINS_ONLY = "plans and users are managed by admins only"


async def _require_admin(request: Request[Any, Any, Any]) -> None:
    if not (await principal_of(request)).is_admin:
        raise Forbidden(ADMINS_ONLY)


async def _fields(request: Request[Any, Any, Any]) -> dict[str, Any]:
    fields = await json_body(request, dict[str, Any])
    if not isinstance(fields, dict):
        raise InvalidRequest("invalid request: expected a JSON object of plan fields")
    return fields


def plan_view(plan: Plan) -> dict[str, Any]:
    return plan.fields()


def user_view(user: UserRecord) -> dict[str, Any]:
    return {"user_id": user.user_id, "plan": user.plan, "keys": user.keys}


@get("/api/plans", summary="Every plan, the built-ins included, as in force")
async def list_plans(request: Request[Any, Any, Any]) -> dict[str, Any]:
    await _require_admin(request)
    return {"plans": [plan_view(plan) for plan in container_of(request).plans().all()]}


@get("/api/plans/{name:str}", summary="One plan")
async def get_plan(request: Request[Any, Any, Any], name: str) -> dict[str, Any]:
    await _require_admin(request)
    return plan_view(container_of(request).plans().get(name))


@put("/api/plans/{name:str}", status_code=200, summary="Create or replace a plan (absent fields: no limit)")
async def put_plan(request: Request[Any, Any, Any], name: str) -> dict[str, Any]:
    await _require_admin(request)
    return plan_view(await container_of(request).plans().put(name, await _fields(request)))


@patch("/api/plans/{name:str}", status_code=200, summary="Change only the fields given")
async def patch_plan(request: Request[Any, Any, Any], name: str) -> dict[str, Any]:
    await _require_admin(request)
    return plan_view(await container_of(request).plans().patch(name, await _fields(request)))


@delete("/api/plans/{name:str}", status_code=200, summary="Delete a plan nobody uses (not a built-in)")
async def delete_plan(request: Request[Any, Any, Any], name: str) -> dict[str, Any]:
    await _require_admin(request)
    await container_of(request).plans().delete(name)
    return {"name": name, "deleted": True}


@get("/api/users", summary="Every user with a key or a plan")
async def list_users(request: Request[Any, Any, Any]) -> dict[str, Any]:
    await _require_admin(request)
    return {"users": [user_view(user) for user in await container_of(request).plans().users()]}


@get("/api/users/{user_id:str}", summary="One user")
async def get_user(request: Request[Any, Any, Any], user_id: str) -> dict[str, Any]:
    await _require_admin(request)
    return user_view(await container_of(request).plans().user(validate_user_id(user_id)))


@put("/api/users/{user_id:str}", status_code=200, summary="Put a user on a plan")
async def put_user(request: Request[Any, Any, Any], user_id: str) -> dict[str, Any]:
    await _require_admin(request)
    fields = await _fields(request)
    plan = fields.get("plan")
    if not isinstance(plan, str) or set(fields) != {"plan"}:
        raise InvalidRequest('invalid request: expected {"plan": "<name>"}')
    user = await container_of(request).plans().assign(user_id, plan)
    return {"user_id": user.user_id, "plan": user.plan}


@get(
    "/api/me",
    before_request=identify_caller,
    summary="Who the gateway thinks you are, and what you have left",
)
async def me(request: Request[Any, Any, Any]) -> dict[str, Any]:
    caller = caller_of(request)
    container = container_of(request)
    gatekeeper = container.gatekeeper()
    plan = gatekeeper.plan_of(caller)
    states, in_flight = await gatekeeper.remaining(caller)
    left = {state.kind: state.remaining for state in states}
    return {
        "user": caller.user,
        "tier": caller.tier.value,
        "plan": plan_view(plan),
        "remaining": {
            "requests": left.get(LimitKind.REQUESTS),
            "tokens": left.get(LimitKind.TOKENS),
            "daily_tokens": left.get(LimitKind.DAILY_TOKENS),
        },
        "in_flight": in_flight,
        "queued": container.gpu_queue().waiting_of(caller.counted_as),
    }


route_handlers = [list_plans, get_plan, put_plan, patch_plan, delete_plan, list_users, get_user, put_user, me]
