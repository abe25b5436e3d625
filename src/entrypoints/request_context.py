"""What the handlers read off a request: the container, the client address, the caller."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection

from ollama_gate.domain.access import Principal
from ollama_gate.domain.client_address import client_address
from ollama_gate.domain.identity import Caller
from ollama_gate.entrypoints.container import Container

AnyConnection = ASGIConnection[Any, Any, Any, Any]


def container_of(connection: AnyConnection) -> Container:
    container: Container = connection.app.state.container
    return container


def peer_of(connection: AnyConnection) -> str:
    client = connection.scope.get("client")
    return client[0] if client else "unknown"


def is_relayed(connection: AnyConnection) -> bool:
    headers = connection.headers
    return "x-forwarded-for" in headers or "forwarded" in headers


def client_ip_of(connection: AnyConnection) -> str:
    peer = peer_of(connection)
    trusted = container_of(connection).settings().trusted_proxies
    if not trusted:
        return peer
    headers = connection.headers
    return client_address(
        peer, headers.getall("x-forwarded-for", []), headers.getall("forwarded", []), trusted
    )


async def identify_caller(connection: AnyConnection) -> None:
    """`before_request` hook of the metered routes: it runs before the body is read, so a bad key is 401
    before all else. (A guard would too, but Litestar copies the route handler for every guard call.)"""
    headers = connection.headers
    caller = (
        await container_of(connection)
        .gatekeeper()
        .identify(headers.get("x-api-key"), headers.get("authorization"), client_ip_of(connection))
    )
    connection.state.caller = caller


def caller_of(request: Request[Any, Any, Any]) -> Caller:
    caller: Caller = request.state.caller
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
