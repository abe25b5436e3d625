"""What the handlers read off a request: the container, the client address, the caller.

The metered routes run these on every request, so they read the ASGI scope itself (its raw header list,
its state dict) rather than Litestar's `Headers` and `State` wrappers, which are built per access.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.types import Scope

from ollama_gate.domain.access import Principal
from ollama_gate.domain.client_address import FORWARDING_HEADERS, client_address
from ollama_gate.domain.identity import Caller
from ollama_gate.entrypoints.config import Settings
from ollama_gate.entrypoints.container import Container
from ollama_gate.entrypoints.request_edge import REQUEST_ID
from ollama_gate.services.gatekeeper import Ticket

AnyConnection = ASGIConnection[Any, Any, Any, Any]


def container_of(connection: AnyConnection) -> Container:
    # `state["container"]`, not `state.container`: State's attributes are found by `__getattr__`, which
    # Python calls only after a failed lookup has built an AttributeError (3 times a request).
    container: Container = connection.app.state["container"]
    return container


def peer_of(connection: AnyConnection) -> str:
    client = connection.scope.get("client")
    return client[0] if client else "unknown"


def is_relayed(connection: AnyConnection) -> bool:
    """Whether the request carries any forwarding header: then it came through a proxy."""
    headers = connection.headers
    return any(name in headers for name in FORWARDING_HEADERS)


def decided_client_ip(scope: Scope, settings: Settings) -> str:
    """The client address by the gateway's trusted-proxy rule, the same each time it is asked for during
    a request (the access log shows the address the limits and usage rows used). Behind trusted proxies
    it is decided once and kept in the request's state; without any it is the peer's address, normalised
    (a cached lookup), and nothing is kept: the state of a request waiting for the GPU stays in its first
    table."""
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    if not settings.trusted_proxies:
        return client_address(peer, (), ())
    state = scope.setdefault("state", {})
    decided: str | None = state.get("client_ip")
    if decided is None:
        wanted = settings.forwarded_header.value.encode()
        values = [value.decode("latin-1") for name, value in scope["headers"] if name.lower() == wanted]
        decided = client_address(peer, values, settings.trusted_proxies, settings.forwarded_header)
        state["client_ip"] = decided
    return decided


def client_ip_of(connection: AnyConnection) -> str:
    return decided_client_ip(connection.scope, container_of(connection).settings())


def _credentials(scope: Scope) -> tuple[str | None, str | None, str | None]:
    """The X-API-Key, Authorization and X-Admin-Token headers (the first of each), in one pass."""
    api_key = authorization = admin_token = None
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            api_key = api_key or value.decode("latin-1")
        elif name == b"authorization":
            authorization = authorization or value.decode("latin-1")
        elif name == b"x-admin-token":
            admin_token = admin_token or value.decode("latin-1")
    return api_key, authorization, admin_token


async def identify_caller(connection: AnyConnection) -> None:
    """`before_request` hook of the metered routes: it runs before the body is read, so a bad key is 401
    before all else. (A guard would too, but Litestar copies the route handler for every guard call.)"""
    scope = connection.scope
    container = container_of(connection)
    api_key, authorization, admin_token = _credentials(scope)
    caller = await container.gatekeeper().identify(
        api_key, authorization, decided_client_ip(scope, container.settings()), admin_token
    )
    scope["state"]["caller"] = caller


async def identify_lister(connection: AnyConnection) -> None:
    """`before_request` hook of the listing paths: the caller as on inference (the admin token included),
    then one admission of the listing paths' own per-identity quota."""
    await identify_caller(connection)
    await container_of(connection).gatekeeper().admit_listing(caller_of(connection))


async def admit(request: Request[Any, Any, Any], model: str | None) -> Ticket:
    """The caller's plan must allow `model` (403), then its limits must have room (429): the ticket of
    an admitted request, whose admission the answer's RateLimit headers (and error answers) read. The ticket
    carries the request's id to its usage row; the state keeps the model and the ticket for the access
    line."""
    container = container_of(request)
    gatekeeper = container.gatekeeper()
    state = request.scope["state"]
    caller: Caller = state["caller"]
    state["model"] = model  # for the metrics' labels and the access line, even when refused
    plan = gatekeeper.check_model(caller, model)
    # With slots shared in Redis, the slot is asked for now: it and the admission share a round trip.
    gpu = container.gpu_queue()
    reserved = gpu.reserve(caller.counted_as, plan, model)
    try:
        ticket = await gatekeeper.admit(caller, plan, state.get(REQUEST_ID))
    except BaseException:
        if reserved is not None:
            reserved.cancel()
        raise
    if reserved is not None:
        gpu.keep(reserved, ticket)
    state["ticket"] = ticket  # one key: the state stays within its first table (a waiting request lives long)
    return ticket


def caller_of(connection: AnyConnection) -> Caller:
    caller: Caller = connection.scope["state"]["caller"]
    return caller


async def principal_of(request: Request[Any, Any, Any]) -> Principal:
    headers = request.headers
    return (
        await container_of(request)
        .access()
        .principal(
            x_api_key=headers.get("x-api-key"),
            authorization=headers.get("authorization"),
            x_admin_token=headers.get("x-admin-token"),
            peer=peer_of(request),
            relayed=is_relayed(request),
        )
    )
