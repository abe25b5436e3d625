"""/api/plans, /api/users and /api/me: the plans, who is on which, and what a caller has left."""

from __future__ import annotations

from typing import Any, TypedDict, cast

from litestar import Request, delete, get, patch, put
from litestar.openapi.spec import OpenAPIType, Schema

from ollama_gate.domain.errors import Forbidden, InvalidRequest
from ollama_gate.domain.keys import validate_user_id
from ollama_gate.domain.plans import DAY_SECONDS, MAX_COUNT, MAX_PRIORITY, Plan
from ollama_gate.domain.quota import LimitKind
from ollama_gate.domain.users import UserRecord
from ollama_gate.entrypoints.openapi_contract import (
    GATEWAY_SHAPE,
    PlanNamePath,
    UserIdPath,
    documented,
    errors,
)
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


class PlanView(TypedDict):
    """A plan as in force: every field, null where unlimited."""

    name: str
    requests: str | None  # "N/W": N requests per W seconds
    tokens: str | None  # "N/W": N tokens per W seconds
    daily_tokens: int | None
    concurrency: int | None
    models: list[str] | None
    max_context: int | None
    max_output: int | None
    max_keep_alive: float | None
    priority: int | None
    weight: float | None
    queue_timeout: float | None


class PlanList(TypedDict):
    plans: list[PlanView]


class DeletedPlan(TypedDict):
    name: str
    deleted: bool


class UserView(TypedDict):
    user_id: str
    plan: str
    keys: int  # active keys


class UserList(TypedDict):
    users: list[UserView]


class UserPlan(TypedDict):
    user_id: str
    plan: str


class Remaining(TypedDict):
    requests: int | None
    tokens: int | None
    daily_tokens: int | None


class Me(TypedDict):
    user: str
    tier: str
    plan: PlanView
    remaining: Remaining
    in_flight: int
    queued: int


def _nullable(schema: Schema) -> Schema:
    return Schema(one_of=[schema, Schema(type=OpenAPIType.NULL)])


_LONGEST = 366 * DAY_SECONDS  # the longest duration a plan field takes
_COUNT = _nullable(Schema(type=OpenAPIType.INTEGER, minimum=1, maximum=MAX_COUNT))
_SECONDS = _nullable(Schema(type=OpenAPIType.NUMBER, minimum=0, maximum=_LONGEST))
_WINDOW = _nullable(
    Schema(
        type=OpenAPIType.STRING,
        pattern=r"^\s*\d+\s*/\s*\d+(\.\d+)?\s*$",
        description='"N/W": N per W seconds, such as "30/60"',
    )
)
PLAN_FIELDS_BODY = Schema(
    type=OpenAPIType.OBJECT,
    properties={
        "name": Schema(description="Ignored: the plan's name is the path's"),
        "requests": _WINDOW,
        "tokens": _WINDOW,
        "daily_tokens": _COUNT,
        "concurrency": _COUNT,
        "models": _nullable(
            Schema(
                type=OpenAPIType.ARRAY,
                items=Schema(type=OpenAPIType.STRING, pattern=r"\S", max_length=256),
                max_items=1000,
                description='Model names or globs such as "llama3.2:*"',
            )
        ),
        "max_context": _COUNT,
        "max_output": _COUNT,
        "max_keep_alive": _nullable(
            Schema(
                one_of=[
                    Schema(
                        type=OpenAPIType.STRING,
                        pattern=r"^\s*\+?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+)\s*$",
                    ),
                    Schema(type=OpenAPIType.NUMBER, minimum=0, maximum=_LONGEST),
                ],
                description='A duration such as "5m" (at most 366 days), or seconds',
            )
        ),
        "priority": _nullable(Schema(type=OpenAPIType.INTEGER, minimum=-MAX_PRIORITY, maximum=MAX_PRIORITY)),
        "weight": _nullable(Schema(type=OpenAPIType.NUMBER, exclusive_minimum=0, maximum=_LONGEST)),
        "queue_timeout": _SECONDS,
    },
    additional_properties=False,
    description="Plan fields; null (or, on PUT, absent) is no limit. Unknown fields are refused.",
    examples=[{"requests": "60/60", "tokens": "20000/3600", "concurrency": 2, "models": ["smollm*"]}],
)
USER_PLAN_BODY = Schema(
    type=OpenAPIType.OBJECT,
    properties={"plan": Schema(type=OpenAPIType.STRING)},
    required=["plan"],
    additional_properties=False,
    examples=[{"plan": "member"}],
)
ADMIN_ERRORS = (400, 401, 403, 503)


def plan_view(plan: Plan) -> PlanView:
    return cast(PlanView, plan.fields())


def user_view(user: UserRecord) -> UserView:
    return {"user_id": user.user_id, "plan": user.plan, "keys": user.keys}


@get(
    "/api/plans",
    summary="Every plan, the built-ins included, as in force",
    responses=errors(GATEWAY_SHAPE, 401, 403, 503),
)
async def list_plans(request: Request[Any, Any, Any]) -> PlanList:
    await _require_admin(request)
    return {"plans": [plan_view(plan) for plan in container_of(request).plans().all()]}


@get("/api/plans/{name:str}", summary="One plan", responses=errors(GATEWAY_SHAPE, *ADMIN_ERRORS, 404))
async def get_plan(request: Request[Any, Any, Any], name: PlanNamePath) -> PlanView:
    await _require_admin(request)
    return plan_view(container_of(request).plans().get(name))


@put(
    "/api/plans/{name:str}",
    status_code=200,
    summary="Create or replace a plan (absent fields: no limit)",
    responses=errors(GATEWAY_SHAPE, *ADMIN_ERRORS, 413),
    opt=documented(PLAN_FIELDS_BODY),
)
async def put_plan(request: Request[Any, Any, Any], name: PlanNamePath) -> PlanView:
    await _require_admin(request)
    return plan_view(await container_of(request).plans().put(name, await _fields(request)))


@patch(
    "/api/plans/{name:str}",
    status_code=200,
    summary="Change only the fields given",
    responses=errors(GATEWAY_SHAPE, *ADMIN_ERRORS, 404, 413),
    opt=documented(PLAN_FIELDS_BODY),
)
async def patch_plan(request: Request[Any, Any, Any], name: PlanNamePath) -> PlanView:
    await _require_admin(request)
    return plan_view(await container_of(request).plans().patch(name, await _fields(request)))


@delete(
    "/api/plans/{name:str}",
    status_code=200,
    summary="Delete a plan nobody uses (not a built-in)",
    responses=errors(GATEWAY_SHAPE, *ADMIN_ERRORS, 404, 409),
)
async def delete_plan(request: Request[Any, Any, Any], name: PlanNamePath) -> DeletedPlan:
    await _require_admin(request)
    await container_of(request).plans().delete(name)
    return {"name": name, "deleted": True}


@get("/api/users", summary="Every user with a key or a plan", responses=errors(GATEWAY_SHAPE, 401, 403, 503))
async def list_users(request: Request[Any, Any, Any]) -> UserList:
    await _require_admin(request)
    return {"users": [user_view(user) for user in await container_of(request).plans().users()]}


@get("/api/users/{user_id:str}", summary="One user", responses=errors(GATEWAY_SHAPE, *ADMIN_ERRORS, 404))
async def get_user(request: Request[Any, Any, Any], user_id: UserIdPath) -> UserView:
    await _require_admin(request)
    return user_view(await container_of(request).plans().user(validate_user_id(user_id)))


@put(
    "/api/users/{user_id:str}",
    status_code=200,
    summary="Put a user on a plan",
    responses=errors(GATEWAY_SHAPE, *ADMIN_ERRORS, 404, 413),
    opt=documented(USER_PLAN_BODY),
)
async def put_user(request: Request[Any, Any, Any], user_id: UserIdPath) -> UserPlan:
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
    responses=errors(GATEWAY_SHAPE, 401, 503),
)
async def me(request: Request[Any, Any, Any]) -> Me:
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
