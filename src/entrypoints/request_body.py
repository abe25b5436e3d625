"""JSON request bodies decoded into their structs: nesting checked first, every failure a clear 400."""

from __future__ import annotations

import math
from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.exceptions import InternalServerException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from ollama_gate.domain.errors import InvalidRequest
from ollama_gate.domain.json_depth import check_nesting

T = TypeVar("T")


def decode_json(body: bytes, into: type[T]) -> T:
    """`body` as `into`; InvalidRequest naming what is wrong (malformed, wrong type, too deep)."""
    check_nesting(body)
    try:
        return msgspec.json.decode(body, type=into)
    except msgspec.ValidationError as error:
        raise InvalidRequest(f"invalid request: {error}") from error
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"invalid JSON body: {error}") from error


async def read_body(request: Request[Any, Any, Any]) -> bytes:
    """The whole body, as `request.body()` reads it (413 past the route's size limit, announced or
    streamed), straight off `receive`: most bodies are one message, and the metered routes read every one."""
    limit = request.route_handler.resolve_request_max_body_size() or math.inf
    for name, value in request.scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise RequestEntityTooLarge
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] != "http.request":
            # The client left while sending it (as Litestar says it): nothing partial goes any further.
            raise InternalServerException("client disconnected prematurely")
        body = message["body"]
        if body:
            size += len(body)
            if size > limit:
                raise RequestEntityTooLarge
            chunks.append(body)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def optional_json_body(request: Request[Any, Any, Any], into: type[T]) -> T | None:
    """The request's JSON body as `into`, or None when it has none."""
    body = await read_body(request)
    return decode_json(body, into) if body.strip() else None


async def json_body(request: Request[Any, Any, Any], into: type[T]) -> T:
    """The request's JSON body as `into`; a missing body is a 400 too."""
    decoded = await optional_json_body(request, into)
    if decoded is None:
        raise InvalidRequest("invalid request: a JSON body is required")
    return decoded
