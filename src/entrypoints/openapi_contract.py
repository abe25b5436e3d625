"""The OpenAPI document as a contract: what each route takes and every answer it can give.

Declared on the handlers, with Litestar's own mechanisms:
- `responses=errors(SHAPE, 401, 429, ...)`: the statuses a route answers besides its success, each with
  its path family's error shape (`ResponseSpec`); `responses=answer(...)` for a success Litestar cannot
  see (the forwarding routes answer with bare ASGI apps, for speed, or with an upstream's body);
- the parameter annotations below (`UserIdQuery`, ...): the domain's rules for ids and names, documented;
- `opt=documented(...)`: what a handler reads or sends itself, out of Litestar's sight: the request body
  of a route that reads raw bytes (the pass-through forwards them untouched and must not pay for a
  decode), the media types of a streamed success, the RateLimit headers of a metered route.
Then `complete_document(app)`, run once by the app factory on the document Litestar built, applies the
`opt` declarations and the headers that belong to a status wherever it is answered (`WWW-Authenticate` on
401, `Retry-After` on 429 and 503), which `ResponseSpec` cannot express. Nothing here runs per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Annotated, Any, TypedDict

import msgspec
from litestar import Litestar
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
)
from litestar.params import Parameter
from litestar.routes import HTTPRoute

from ollama_gate.domain.immutable import immutable
from ollama_gate.domain.keys import KEY_NAME_MAX_LENGTH, MAX_KEY_ID, USER_ID_PATTERN
from ollama_gate.domain.plans import PLAN_NAME_PATTERN
from ollama_gate.entrypoints.asgi_answers import JSON

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
OCTET_STREAM = "application/octet-stream"
OPT_KEY = "openapi"

# -- the error shapes, one per path family (see http_errors.py, which shapes them at run time) ------------


class _Detail(TypedDict):
    detail: str


class GatewayErrorBody(_Detail, total=False):
    """An error on the gateway's own paths."""

    # With Retry-After, when trying again later may succeed. (Not `NotRequired[int]`: under postponed
    # annotations Python 3.11's TypedDict cannot see it, and the field would be documented as required.)
    retry_after: int


class OllamaErrorBody(TypedDict):
    """An error on Ollama's paths, gateway's or Ollama's own: what Ollama's clients read."""

    error: str


class OpenAIError(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(TypedDict):
    """An error on /v1/*, gateway's or Ollama's own: what the OpenAI SDKs read."""

    error: OpenAIError


ErrorShape = type[GatewayErrorBody] | type[OllamaErrorBody] | type[OpenAIErrorBody]
# Which API a path speaks, and so which error shape its clients read.
GATEWAY_SHAPE: ErrorShape = GatewayErrorBody
OLLAMA_SHAPE: ErrorShape = OllamaErrorBody
OPENAI_SHAPE: ErrorShape = OpenAIErrorBody

_WHY: dict[int, str] = {
    400: "Invalid request: malformed JSON, a body nested too deeply, wrong types or values",
    401: "A key or admin token was presented and is not valid (a wrong key is never downgraded to anonymous)",
    403: "Not allowed: admins only, another user's data, or a model outside the caller's plan",
    404: "Not found",
    409: "Conflict: the plan is built in or still in use",
    413: "Request body larger than OLLAMA_GATE_MAX_BODY_BYTES",
    429: "A limit of the caller's plan is reached (requests, tokens, concurrency, or requests queued)",
    500: "Ollama's own server error, passed through as Ollama sent it",
    502: "Ollama answered with a server error, an unreadable answer, or the connection to it broke",
    503: "Ollama offline or busy, the GPU queue full or its wait too long, the database or the shared"
    " rate limiter unavailable, or the gateway shutting down",
    504: "Ollama went silent past OLLAMA_GATE_READ_TIMEOUT",
}


def errors(shape: ErrorShape | None, *statuses: int) -> dict[int, ResponseSpec]:
    """`responses=` of a route handler: each of `statuses` with its path family's error `shape` (None:
    without a body, as answers to HEAD are)."""
    return {
        status: ResponseSpec(
            data_container=shape,
            description=_WHY.get(status, HTTPStatus(status).phrase),
            generate_examples=False,
        )
        for status in statuses
    }


def answer(
    container: Any,
    *,
    status: int = 200,
    media_type: str = JSON,
    description: str | None = None,
) -> dict[int, ResponseSpec]:
    """`responses=` of a handler whose success Litestar cannot see (it sends a bare ASGI answer, or one
    of an upstream's): `container` describes its body (one item of a stream); None for an empty body."""
    return {
        status: ResponseSpec(
            data_container=container,
            description=description or HTTPStatus(status).phrase,
            media_type=media_type,
            generate_examples=False,
        )
    }


# -- parameters: documented with the domain's own rules, which stay the only ones that check them -------
# (`schema_extra` reaches the document only; Litestar's own constraints would validate a second time.)


def _documented_as(description: str, **schema: Any) -> Any:
    return Parameter(description=description, schema_extra=schema)


UserIdQuery = Annotated[
    str | None,
    _documented_as("The user acted on (members: only their own)", pattern=f"^{USER_ID_PATTERN}$"),
]
UserIdPath = Annotated[str, _documented_as("A user id", pattern=f"^{USER_ID_PATTERN}$")]
PlanNamePath = Annotated[str, _documented_as("A plan's name", pattern=f"^{PLAN_NAME_PATTERN}$")]
KeyIdPath = Annotated[int, _documented_as("A key's id", minimum=1, maximum=MAX_KEY_ID)]
KeyNameQuery = Annotated[
    str | None,
    _documented_as(
        f"1-{KEY_NAME_MAX_LENGTH} printable characters (default `default`)", maxLength=KEY_NAME_MAX_LENGTH
    ),
]
PlanQuery = Annotated[str | None, _documented_as("A plan of the key's own (admins only)")]


# -- what handlers read and send themselves ----------------------------------------------------------


@immutable
class Documented:
    body: Schema | Mapping[str, Schema] | None = None
    body_type: str = JSON
    required: bool = True
    streamed: tuple[str, ...] = ()
    metered: bool = False


def documented(
    body: Schema | Mapping[str, Schema] | None = None,
    *,
    body_type: str = JSON,
    required: bool = True,
    streamed: Iterable[str] = (),
    metered: bool = False,
) -> dict[str, Any]:
    """`opt=` of a route handler: the request `body` it reads itself (of `body_type`; `required` or
    not; one per path for a handler of several paths), the media types `streamed` a success may come as besides JSON, and whether its answers carry
    RateLimit headers."""
    return {OPT_KEY: Documented(body, body_type, required, tuple(streamed), metered)}


def _string(description: str | None = None) -> Schema:
    return Schema(type=OpenAPIType.STRING, description=description)


def _integer(description: str | None = None) -> Schema:
    return Schema(type=OpenAPIType.INTEGER, description=description)


_JSON_SCHEMA_KEYS = {
    "type": "type",
    "description": "description",
    "minLength": "min_length",
    "maxLength": "max_length",
    "required": "required",
    "default": "default",
    "title": "title",
}


def _from_json_schema(schema: Mapping[str, Any]) -> Schema:
    """A JSON Schema (the subset msgspec writes for a Struct's fields) as Litestar's Schema."""
    fields: dict[str, Any] = {
        ours: schema[theirs] for theirs, ours in _JSON_SCHEMA_KEYS.items() if theirs in schema
    }
    if "type" in fields:
        fields["type"] = OpenAPIType(fields["type"])
    if "anyOf" in schema:
        fields["any_of"] = [_from_json_schema(option) for option in schema["anyOf"]]
    if "properties" in schema:
        fields["properties"] = {
            name: _from_json_schema(field) for name, field in schema["properties"].items()
        }
    return Schema(**fields)


def struct_body(struct: type[msgspec.Struct], example: dict[str, Any]) -> Schema:
    """The request body a handler decodes into `struct` itself, documented from the struct's own rules
    (msgspec's schema of it), so the document and the decoder cannot disagree; other fields are ignored."""
    schema = msgspec.json.schema(struct)
    name = schema["$ref"].rsplit("/", 1)[1]
    body = _from_json_schema(schema["$defs"][name])
    body.additional_properties = True
    body.examples = [example]
    return body


def free_object(
    properties: Mapping[str, Schema], required: Iterable[str] = (), description: str | None = None
) -> Schema:
    """A JSON object with the fields the gateway reads; anything else is passed on as it came."""
    return Schema(
        type=OpenAPIType.OBJECT,
        properties=dict(properties),
        required=list(required) or None,
        additional_properties=True,
        description=description,
    )


_KEEP_ALIVE = Schema(
    one_of=[_string(), Schema(type=OpenAPIType.NUMBER)],
    description="A duration (`5m`) or seconds; lowered to the plan's max_keep_alive",
)
_OLLAMA_OPTIONS = free_object(
    {
        "num_ctx": _integer("Context length; lowered to the plan's max_context"),
        "num_predict": _integer("Most tokens to generate; lowered to the plan's max_output"),
    },
    description="Ollama's model options, passed on",
)
_MODEL = _string("The model; the caller's plan must allow it")
_MESSAGES = Schema(
    type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.OBJECT), description="The conversation"
)
_INPUT = Schema(
    one_of=[_string(), Schema(type=OpenAPIType.ARRAY, items=_string())], description="The text(s) to embed"
)
_FORWARDED = "forwarded untouched, but for the plan's ceilings"


def _ollama_body(text_field: str, text: Schema, example: dict[str, Any], *, generates: bool) -> Schema:
    fields = {"model": _MODEL, text_field: text, "keep_alive": _KEEP_ALIVE, "options": _OLLAMA_OPTIONS}
    if generates:
        fields["stream"] = Schema(type=OpenAPIType.BOOLEAN, description="Absent or true: an NDJSON stream")
    body = free_object(fields, required=["model"], description=f"Ollama's request body, {_FORWARDED}")
    body.examples = [example]
    return body


def _openai_body(text_field: str, text: Schema, example: dict[str, Any], *, generates: bool) -> Schema:
    fields = {"model": _MODEL, text_field: text}
    if generates:
        fields |= {
            "stream": Schema(type=OpenAPIType.BOOLEAN, description="true: server-sent events"),
            "max_tokens": _integer("Lowered to the plan's max_output"),
            "max_completion_tokens": _integer("Lowered to the plan's max_output"),
        }
    body = free_object(fields, required=["model"], description=f"The OpenAI request body, {_FORWARDED}")
    body.examples = [example]
    return body


_HI = "Why is the sky blue?"
_CHAT = [{"role": "user", "content": _HI}]
OLLAMA_BODIES = {
    "/api/generate": _ollama_body(
        "prompt", _string(), {"model": "smollm:latest", "prompt": _HI, "stream": False}, generates=True
    ),
    "/api/chat": _ollama_body(
        "messages", _MESSAGES, {"model": "smollm:latest", "messages": _CHAT, "stream": False}, generates=True
    ),
    "/api/embed": _ollama_body("input", _INPUT, {"model": "smollm:latest", "input": _HI}, generates=False),
    "/api/embeddings": _ollama_body(
        "prompt", _string(), {"model": "smollm:latest", "prompt": _HI}, generates=False
    ),
}
OPENAI_BODIES = {
    "/v1/chat/completions": _openai_body(
        "messages", _MESSAGES, {"model": "smollm:latest", "messages": _CHAT}, generates=True
    ),
    "/v1/completions": _openai_body(
        "prompt", _string(), {"model": "smollm:latest", "prompt": _HI}, generates=True
    ),
    "/v1/embeddings": _openai_body(
        "input", _INPUT, {"model": "smollm:latest", "input": _HI}, generates=False
    ),
}
OLLAMA_SHOW_BODY = free_object(
    {"model": _MODEL}, required=["model"], description="Ollama's request body, forwarded untouched"
)
OLLAMA_SHOW_BODY.examples = [{"model": "smollm:latest"}]
OLLAMA_MANAGEMENT_BODY = free_object(
    {
        "model": _string("The model (routes the request to the server that has it)"),
        "name": _string("The older spelling of `model`"),
        "source": _string("/api/copy: the model copied"),
    },
    description="Ollama's request body, forwarded untouched",
)
BLOB_BODY = Schema(type=OpenAPIType.STRING, format=None, content_media_type=OCTET_STREAM)

# What one item of a stream is (OpenAPI 3.2's reading of `schema` beside a streamed media type).
_STREAM_ITEMS = {
    NDJSON: Schema(
        type=OpenAPIType.OBJECT,
        description="One JSON object per line, relayed as it arrives; a failure after the first line is"
        ' a last `{"error": ...}` line',
    ),
    SSE: Schema(
        type=OpenAPIType.OBJECT,
        properties={
            "data": _string("A JSON chunk, or `[DONE]` at the end"),
            "event": _string(),
            "id": _string(),
        },
        description="A server-sent event, relayed as it arrives",
    ),
}

# -- headers ---------------------------------------------------------------------------------------

_RATE_LIMIT_HEADERS = {
    "RateLimit-Policy": 'Each windowed limit of the plan: `"<plan>";q=<limit>;w=<seconds>`',
    "RateLimit": 'What is left of each: `"<plan>";r=<remaining>;t=<seconds until reset>`',
    "X-RateLimit-Limit": "The first windowed limit",
    "X-RateLimit-Remaining": "What is left of it",
    "X-RateLimit-Reset": "Seconds until it resets",
}


def _header(description: str, required: bool = False, integer: bool = False) -> OpenAPIHeader:
    schema = Schema(type=OpenAPIType.STRING, pattern=r"^[0-9]+$" if integer else None)
    return OpenAPIHeader(schema=schema, description=description, required=required)


def _rate_limit_headers() -> dict[str, OpenAPIHeader]:
    return {name: _header(why, integer=name.startswith("X-")) for name, why in _RATE_LIMIT_HEADERS.items()}


def _status_headers(status: str) -> dict[str, OpenAPIHeader]:
    if status == "401":
        return {"WWW-Authenticate": _header('`Bearer realm="ollama-gate"`', required=True)}
    if status == "429":
        retry = _header("Whole seconds until a request may be admitted", required=True, integer=True)
        return {"Retry-After": retry, **_rate_limit_headers()}
    if status == "503":
        return {"Retry-After": _header("Whole seconds, when waiting may help", integer=True)}
    return {}


# -- the document ----------------------------------------------------------------------------------


def _operations(app: Litestar, openapi: OpenAPI) -> Iterable[tuple[str, Operation, Documented | None]]:
    """Each documented operation, with its path and its handler's declarations."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path = route.path_format or "/"
        path_item = (openapi.paths or {}).get(path)
        if path_item is None:
            continue
        for handler in route.route_handlers:
            if not handler.include_in_schema:
                continue
            declared = handler.opt.get(OPT_KEY)
            for method in handler.http_methods:
                operation = getattr(path_item, method.lower(), None)
                if isinstance(operation, Operation):
                    yield path, operation, declared if isinstance(declared, Documented) else None


def _apply(openapi: OpenAPI, path: str, operation: Operation, declared: Documented) -> None:
    body = declared.body.get(path) if isinstance(declared.body, Mapping) else declared.body
    if body is not None:
        schema: Schema | Reference = body
        if body.title:  # a named type (`struct_body`): one component, referenced
            components = openapi.components
            components.schemas = {**(components.schemas or {}), body.title: body}
            schema = Reference(ref=f"#/components/schemas/{body.title}")
        operation.request_body = RequestBody(
            content={declared.body_type: OpenAPIMediaType(schema=schema)}, required=declared.required
        )
    responses = operation.responses or {}
    success = next((r for code, r in responses.items() if code.startswith("2")), None)
    if isinstance(success, OpenAPIResponse):
        content = success.content or {}
        for media_type in declared.streamed:
            content[media_type] = OpenAPIMediaType(schema=_STREAM_ITEMS[media_type])
        success.content = content or None
    if declared.metered:
        # Once admitted, every answer carries them (the success, Ollama's own errors, the gateway's).
        for answer in responses.values():
            if isinstance(answer, OpenAPIResponse):
                answer.headers = {**_rate_limit_headers(), **(answer.headers or {})}


def complete_document(app: Litestar) -> OpenAPI:
    """The app's OpenAPI document, completed in place (Litestar serves the object it built once)."""
    openapi = app.openapi_schema
    for path, operation, declared in _operations(app, openapi):
        if declared is not None:
            _apply(openapi, path, operation, declared)
        for status, answer in (operation.responses or {}).items():
            if isinstance(answer, OpenAPIResponse) and (headers := _status_headers(status)):
                answer.headers = {**(answer.headers or {}), **headers}
        if operation.responses:
            operation.responses = dict(sorted(operation.responses.items()))
    return openapi
