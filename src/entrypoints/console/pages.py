"""The console's pages under /console: sign-in, overview, keys and users, plans, usage, models.

Handlers turn a form or a query string into a service call and the answer into a template; the rules
(who may see what, what a valid plan is) are the services' and the domain's, as for the API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.datastructures import CacheControlHeader
from litestar.response import Stream
from litestar.static_files import create_static_files_router

from ollama_gate.domain.access import is_local_admin
from ollama_gate.domain.console_forms import plan_fields_from_form, plan_form_values
from ollama_gate.domain.errors import Forbidden, GatewayError, InvalidRequest, NotFound
from ollama_gate.domain.keys import MAX_KEY_ID
from ollama_gate.domain.plans import BUILTIN_PLANS, FIELD_NAMES, validate_plan_name
from ollama_gate.domain.usage_query import GroupBy, UsageFilter, parse_group_by, usage_filter
from ollama_gate.domain.usage_series import Series, parse_range
from ollama_gate.entrypoints.console.web import (
    LOGIN_PATH,
    PREFIX,
    SECURITY_HEADERS,
    STATIC,
    Visitor,
    exception_handlers,
    form_of,
    from_own_pages,
    page,
    posted,
    see_other,
    session_cookie,
    sessions_of,
    visitor_of,
)
from ollama_gate.entrypoints.controllers.usage import CSV_MEDIA_TYPE, EXPORT_CHUNK_ROWS, csv_body
from ollama_gate.entrypoints.request_context import client_ip_of, container_of, is_relayed, peer_of

PAGE_ROWS = 50
TOP_USERS = 10
SUMMARY_DEFAULT = timedelta(hours=1)
PLAN_HINTS = {
    "requests": "N/W: at most N requests in any W seconds, such as 30/60",
    "tokens": "N/W: at most N tokens in any W seconds, such as 20000/3600",
    "daily_tokens": "tokens per day",
    "concurrency": "requests at once",
    "models": "names or globs, separated by commas, such as llama3.2:*, smollm",
    "max_context": "largest num_ctx a request may ask for",
    "max_output": "largest num_predict",
    "max_keep_alive": "a duration such as 5m, or seconds",
    "priority": "-1000 to 1000; higher goes first in the GPU queue",
    "weight": "share of the GPU among equals (default 1)",
    "queue_timeout": "seconds a request may wait in the queue (default 60)",
}


def _home(visitor: Visitor) -> str:
    return f"{PREFIX}/overview" if visitor.is_admin else f"{PREFIX}/usage"


# -- signing in and out ------------------------------------------------------------------------------


@get("/", include_in_schema=False)
async def console_root(request: Request[Any, Any, Any]) -> Response[Any]:
    return see_other(_home(await visitor_of(request)))


@get("/login", include_in_schema=False)
async def login_page(request: Request[Any, Any, Any]) -> Response[Any]:
    return page(request, "login.html", None, loopback=_loopback_sign_in(request))


def _loopback_sign_in(request: Request[Any, Any, Any]) -> bool:
    return sessions_of(request).loopback_sign_in and is_local_admin(peer_of(request), is_relayed(request))


@post("/login", status_code=303, include_in_schema=False)
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    # No session yet, so no form token: the origin check is what keeps another site from signing a
    # visitor in (with SameSite=Strict the cookie it would set is never sent from there anyway).
    if not from_own_pages(request):
        raise Forbidden("cross-site request refused: submit the form from the console's own pages")
    form = await form_of(request)
    sessions = sessions_of(request)
    try:
        session = await sessions.sign_in(
            form.get("credential", ""), peer_of(request), is_relayed(request), client_ip_of(request)
        )
    except GatewayError as error:
        if error.status >= 500:
            raise
        return page(
            request,
            "login.html",
            None,
            status_code=error.status,
            error=str(error),
            loopback=_loopback_sign_in(request),
        )
    response = see_other(f"{PREFIX}/overview" if session.is_admin else f"{PREFIX}/usage")
    response.cookies.append(session_cookie(request, sessions.cookie_value(session), int(sessions.lifetime)))
    return response


@post("/logout", status_code=303, include_in_schema=False)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    await posted(request)
    response = see_other(LOGIN_PATH)
    response.cookies.append(session_cookie(request, "", 0))
    return response


# -- overview ----------------------------------------------------------------------------------------


def series_document(series: Series) -> dict[str, Any]:
    return {
        "t": series.times,
        "requests": [round(v, 3) for v in series.requests_per_minute],
        "tokens": [round(v, 3) for v in series.tokens_per_minute],
        "total_requests": series.total_requests,
        "total_tokens": series.total_tokens,
    }


@get("/overview", include_in_schema=False)
async def overview(request: Request[Any, Any, Any]) -> Response[Any]:
    visitor = await visitor_of(request, admin=True)
    container = container_of(request)
    charts = container.usage_charts()
    hour, day = await charts.hour_and_day(visitor.principal)
    top = await charts.top_users(visitor.principal, TOP_USERS)
    queue = await container.gpu_queue().snapshot() if container.gpu_queue().enabled else []
    upstreams = container.llm().upstream_states()
    charts_json = msgspec.json.encode({"hour": series_document(hour), "day": series_document(day)}).decode()
    return page(
        request,
        "overview.html",
        visitor,
        upstreams=upstreams,
        queue=queue,
        busy=sum(m.busy for m in queue),
        slots=sum(m.slots or 0 for m in queue),
        waiting=sum(m.waiting for m in queue),
        hour=hour,
        day=day,
        charts_json=charts_json,
        top=top,
        since_day=(datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
    )


@get("/api/series", include_in_schema=False)
async def series_api(request: Request[Any, Any, Any], range: str | None = None) -> Response[Any]:
    visitor = await visitor_of(request)
    series = await container_of(request).usage_charts().series(visitor.principal, parse_range(range))
    return Response(series_document(series), headers=SECURITY_HEADERS)


# -- keys and users ----------------------------------------------------------------------------------


async def _keys_page(
    request: Request[Any, Any, Any], visitor: Visitor, status_code: int = 200, **extra: Any
) -> Response[Any]:
    container = container_of(request)
    principal = visitor.principal
    keys = await container.keys().list(None if principal.is_admin else principal.user_id)
    users = await container.plans().users() if principal.is_admin else []
    plans = [plan.name for plan in container.plans().all()] if principal.is_admin else []
    message = {"revoked": "The key was revoked.", "plan": "The plan was changed."}.get(
        request.query_params.get("done", ""), ""
    )
    return page(
        request,
        "keys.html",
        visitor,
        status_code=status_code,
        keys=keys,
        users=users,
        plans=plans,
        message=message,
        **extra,
    )


@get("/keys", include_in_schema=False)
async def keys_page(request: Request[Any, Any, Any]) -> Response[Any]:
    return await _keys_page(request, await visitor_of(request))


@post("/keys", status_code=200, include_in_schema=False)
async def create_key(request: Request[Any, Any, Any]) -> Response[Any]:
    visitor, form = await posted(request)
    container = container_of(request)
    principal = visitor.principal
    owner = (form.get("user_id") or "").strip() if principal.is_admin else principal.user_id
    name = (form.get("name") or "").strip() or None
    plan = (form.get("plan") or "").strip() or None
    try:
        if plan is not None and not principal.is_admin:
            raise Forbidden("only an admin may give a key a plan of its own")
        container.plans().require_plan(plan)
        issued = await container.keys().create(owner or "", name, plan)
    except GatewayError as error:
        if error.status >= 500:
            raise
        return await _keys_page(request, visitor, status_code=error.status, error=str(error), form=form)
    # The secret is in this answer only (not a redirect: it never lands in a URL or a history entry).
    return await _keys_page(request, visitor, created=issued)


def _key_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 19 or not 1 <= int(text) <= MAX_KEY_ID:
        raise InvalidRequest("no such key")
    return int(text)


@post("/keys/{key_id:str}/revoke", status_code=303, include_in_schema=False)
async def revoke_key(request: Request[Any, Any, Any], key_id: str) -> Response[Any]:
    visitor, _ = await posted(request)
    principal = visitor.principal
    await (
        container_of(request)
        .keys()
        .revoke(_key_id(key_id), None if principal.is_admin else principal.user_id)
    )
    return see_other(f"{PREFIX}/keys", done="revoked")


@post("/users/{user_id:str}/plan", status_code=303, include_in_schema=False)
async def assign_plan(request: Request[Any, Any, Any], user_id: str) -> Response[Any]:
    _, form = await posted(request, admin=True)
    await container_of(request).plans().assign(user_id, (form.get("plan") or "").strip())
    return see_other(f"{PREFIX}/keys", done="plan")


# -- plans -------------------------------------------------------------------------------------------


def _plans_page(
    request: Request[Any, Any, Any],
    visitor: Visitor,
    status_code: int = 200,
    errors: dict[str, str] | None = None,
    entered: dict[str, dict[str, str]] | None = None,
    message: str = "",
) -> Response[Any]:
    book = container_of(request).plans()
    plans = [
        {
            "name": plan.name,
            "source": book.source(plan.name),
            "builtin": plan.name in BUILTIN_PLANS,
            "values": (entered or {}).get(plan.name) or plan_form_values(plan.fields()),
        }
        for plan in book.all()
    ]
    new_values = (entered or {}).get("") or dict.fromkeys(FIELD_NAMES, "")
    return page(
        request,
        "plans.html",
        visitor,
        status_code=status_code,
        plans=plans,
        fields=FIELD_NAMES,
        hints=PLAN_HINTS,
        errors=errors or {},
        new_values=new_values,
        new_name=(entered or {}).get("", {}).get("name", ""),
        message=message,
    )


@get("/plans", include_in_schema=False)
async def plans_page(request: Request[Any, Any, Any]) -> Response[Any]:
    visitor = await visitor_of(request, admin=True)
    done = request.query_params.get("saved")
    return _plans_page(request, visitor, message=f"Plan {done} saved." if done else "")


@post("/plans", status_code=303, include_in_schema=False)
async def save_plan(request: Request[Any, Any, Any]) -> Response[Any]:
    """Create a plan (the form's `name`) or replace one with exactly the form's fields."""
    visitor, form = await posted(request, admin=True)
    name = (form.get("name") or "").strip()
    key = "" if form.get("new") else name
    try:
        validate_plan_name(name)
        await container_of(request).plans().put(name, plan_fields_from_form(form))
    except InvalidRequest as error:
        entered = {field: form.get(field, "") for field in (*FIELD_NAMES, "name")}
        return _plans_page(request, visitor, 400, errors={key: str(error)}, entered={key: entered})
    return see_other(f"{PREFIX}/plans", saved=name)


# -- usage -------------------------------------------------------------------------------------------


def _usage_query(request: Request[Any, Any, Any], visitor: Visitor) -> tuple[dict[str, str], str | None]:
    """The filters as entered (empty ones dropped) and the user they ask for (admins only)."""
    wanted = ("since", "until", "model", "status", "outcome", "user_id", "group_by")
    entered = {name: request.query_params.get(name, "").strip() for name in wanted}
    entered = {name: value for name, value in entered.items() if value}
    user = entered.get("user_id") if visitor.is_admin else None
    return entered, user


def _filters(entered: dict[str, str], cursor: str | None = None) -> UsageFilter:
    return usage_filter(
        entered.get("since"),
        entered.get("until"),
        entered.get("model"),
        entered.get("status"),
        entered.get("outcome"),
        cursor,
    )


@get("/usage", include_in_schema=False)
async def usage_page(request: Request[Any, Any, Any]) -> Response[Any]:
    visitor = await visitor_of(request)
    entered, user = _usage_query(request, visitor)
    reports = container_of(request).usage_reports()
    cursor = request.query_params.get("cursor") or None
    try:
        filters = _filters(entered, cursor)
        grouping = parse_group_by(entered.get("group_by") or ("user" if visitor.is_admin else "model"))
    except InvalidRequest as error:
        return page(
            request, "usage.html", visitor, 400, error=str(error), entered=entered, rows=[], groups=[]
        )
    usage = await reports.page(visitor.principal, PAGE_ROWS, user, filters)
    # The summary reads every row of its range: without a `since`, the last hour only (said on the page).
    summary_filter = dataclasses.replace(filters, before_id=None)
    bounded = summary_filter.since is None
    if bounded:
        summary_filter = dataclasses.replace(summary_filter, since=datetime.now(UTC) - SUMMARY_DEFAULT)
    groups = await reports.summary(visitor.principal, user, summary_filter, grouping)
    query = dict(entered)
    next_query = {**query, "cursor": str(usage.next_cursor)} if usage.next_cursor is not None else None
    return page(
        request,
        "usage.html",
        visitor,
        entered=entered,
        rows=usage.records,
        next_query=next_query,
        groups=groups,
        group_by=grouping.value,
        groupings=[g.value for g in GroupBy],
        summary_default=bounded,
        csv_query=query,
    )


@get("/usage.csv", include_in_schema=False)
async def usage_csv(request: Request[Any, Any, Any]) -> Response[Any]:
    visitor = await visitor_of(request)
    entered, user = _usage_query(request, visitor)
    chunks = (
        container_of(request)
        .usage_reports()
        .export(visitor.principal, user, _filters(entered), EXPORT_CHUNK_ROWS)
    )
    first = await anext(chunks, None)
    return Stream(
        csv_body(first, chunks),
        media_type=CSV_MEDIA_TYPE,
        headers={"Content-Disposition": 'attachment; filename="usage.csv"', "Cache-Control": "no-store"},
    )


# -- models ------------------------------------------------------------------------------------------


async def _models_of(request: Request[Any, Any, Any], name: str) -> list[dict[str, Any]] | None:
    """One server's `/api/tags` (None when it does not answer)."""
    try:
        relayed = (
            await container_of(request)
            .passthrough()
            .forward("GET", "/api/tags", None, None, upstream_name=name)
        )
    except GatewayError:
        return None
    if relayed.status != 200:
        return None
    try:
        models = msgspec.json.decode(relayed.body).get("models", [])
    except (msgspec.DecodeError, AttributeError):
        return None
    return [m for m in models if isinstance(m, dict) and isinstance(m.get("name"), str)]


@get("/models", include_in_schema=False)
async def models_page(request: Request[Any, Any, Any]) -> Response[Any]:
    visitor = await visitor_of(request, admin=True)
    servers = []
    for state in container_of(request).llm().upstream_states():
        servers.append({"state": state, "models": await _models_of(request, state.name)})
    message = request.query_params.get("deleted")
    return page(
        request,
        "models.html",
        visitor,
        servers=servers,
        message=f"Model {message} deleted." if message else "",
    )


def _upstream_named(request: Request[Any, Any, Any], name: str) -> str:
    if name not in {s.name for s in container_of(request).llm().upstream_states()}:
        raise InvalidRequest(f"no upstream called {name!r}")
    return name


def _model_named(text: str) -> str:
    model = text.strip()
    if not model or len(model) > 256:
        raise InvalidRequest("enter a model name, such as smollm:latest")
    return model


@post("/models/pull", status_code=200, include_in_schema=False)
async def pull_model(request: Request[Any, Any, Any]) -> Response[Any]:
    """Ollama's progress lines as they come (the page's script draws the bar from them)."""
    _, form = await posted(request, admin=True)
    upstream = _upstream_named(request, form.get("upstream", ""))
    model = _model_named(form.get("model", ""))
    body = msgspec.json.encode({"model": model, "stream": True})
    relayed = (
        await container_of(request)
        .passthrough()
        .forward("POST", "/api/pull", body, model, upstream_name=upstream)
    )
    if relayed.stream is None:
        return Response(relayed.body, status_code=relayed.status, media_type="application/json")
    stream = relayed.stream

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                yield chunk
        finally:
            relayed.abandon()

    return Stream(lines(), media_type="application/x-ndjson", headers={"Cache-Control": "no-store"})


@post("/models/delete", status_code=303, include_in_schema=False)
async def delete_model(request: Request[Any, Any, Any]) -> Response[Any]:
    _, form = await posted(request, admin=True)
    upstream = _upstream_named(request, form.get("upstream", ""))
    model = _model_named(form.get("model", ""))
    relayed = (
        await container_of(request)
        .passthrough()
        .forward(
            "DELETE", "/api/delete", msgspec.json.encode({"model": model}), model, upstream_name=upstream
        )
    )
    if relayed.status != 200:
        try:
            detail = str(msgspec.json.decode(relayed.body).get("error", ""))
        except (msgspec.DecodeError, AttributeError):
            detail = ""
        raise InvalidRequest(f"{upstream} could not delete {model}: {detail or relayed.status}")
    return see_other(f"{PREFIX}/models", deleted=model)


@get("/{rest:path}", include_in_schema=False)
async def not_found(request: Request[Any, Any, Any], rest: str) -> Response[Any]:
    """Any other console path: a page that says so (after sign-in, like every page)."""
    await visitor_of(request)
    raise NotFound(f"there is no console page at {request.url.path}")


console_router = Router(
    path=PREFIX,
    route_handlers=[
        console_root,
        login_page,
        login,
        logout,
        overview,
        series_api,
        keys_page,
        create_key,
        revoke_key,
        assign_plan,
        plans_page,
        save_plan,
        usage_page,
        usage_csv,
        models_page,
        pull_model,
        delete_model,
        not_found,
        create_static_files_router(
            path="/static",
            directories=[STATIC],
            cache_control=CacheControlHeader(max_age=86_400, public=True),
            name="console-static",
        ),
    ],
    exception_handlers=exception_handlers,
    include_in_schema=False,
)
