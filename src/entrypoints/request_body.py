"""JSON request bodies decoded into their structs: nesting checked first, every failure a clear 400."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Request

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


async def optional_json_body(request: Request[Any, Any, Any], into: type[T]) -> T | None:
    """The request's JSON body as `into`, or None when it has none."""
    body = await request.body()
    return decode_json(body, into) if body.strip() else None


async def json_body(request: Request[Any, Any, Any], into: type[T]) -> T:
    """The request's JSON body as `into`; a missing body is a 400 too."""
    decoded = await optional_json_body(request, into)
    if decoded is None:
        raise InvalidRequest("invalid request: a JSON body is required")
    return decoded
