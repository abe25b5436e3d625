"""The OpenAPI document describes what the gateway sends: each path family's error shape, a request body
wherever one is read, the headers of 401/429/503, the streamed media types, and `Allow` on shared paths.

(The live check, requests against a running gateway, is tests/integration/test_openapi_contract.py.)
"""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from ollama_gate.entrypoints.app import create_app
from ollama_gate.entrypoints.config import Settings
from ollama_gate.entrypoints.container import build_container
from ollama_gate.entrypoints.http_errors import is_ollama_path, is_openai_path

METHODS = ("get", "put", "post", "delete", "patch", "head")
METERED = [
    "/chat",
    "/chat/stream",
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
]


@pytest.fixture(scope="module")
def app() -> Litestar:
    return create_app(build_container(Settings()))


@pytest.fixture(scope="module")
def document(app: Litestar) -> dict[str, Any]:
    schema: dict[str, Any] = app.openapi_schema.to_schema()
    return schema


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def expected_shape(path: str) -> str:
    if is_ollama_path(path):
        return "#/components/schemas/OllamaErrorBody"
    if is_openai_path(path):
        return "#/components/schemas/OpenAIErrorBody"
    return "#/components/schemas/GatewayErrorBody"


def test_every_error_has_its_path_familys_shape(document: dict[str, Any]) -> None:
    seen = 0
    for path, method, operation in operations(document):
        for status, answer in operation["responses"].items():
            if int(status) < 400:
                continue
            content = answer.get("content")
            if method == "head":
                assert content is None, (path, status)  # an answer to HEAD has no body
                continue
            assert list(content) == ["application/json"], (method, path, status)
            assert content["application/json"]["schema"] == {"$ref": expected_shape(path)}, (path, status)
            seen += 1
    assert seen > 100


def test_the_gateway_error_shape_is_detail_and_an_optional_retry_after(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]

    assert schemas["GatewayErrorBody"]["required"] == ["detail"]
    assert set(schemas["GatewayErrorBody"]["properties"]) == {"detail", "retry_after"}
    assert schemas["OllamaErrorBody"]["required"] == ["error"]
    assert sorted(schemas["OpenAIError"]["required"]) == ["code", "message", "param", "type"]


def test_every_route_that_reads_a_body_documents_it(document: dict[str, Any]) -> None:
    for path, method, operation in operations(document):
        if method in ("post", "put", "patch") or path == "/api/delete":
            assert "requestBody" in operation, (method, path)
    generate = document["paths"]["/api/generate"]["post"]["requestBody"]["content"]["application/json"]
    assert generate["schema"]["required"] == ["model"]
    assert generate["schema"]["additionalProperties"] is True
    blob = document["paths"]["/api/blobs/{digest}"]["post"]["requestBody"]["content"]
    assert list(blob) == ["application/octet-stream"]


def test_metered_routes_document_429_with_retry_after_and_rate_limit_headers(
    document: dict[str, Any],
) -> None:
    for path in METERED:
        responses = document["paths"][path]["post"]["responses"]
        assert responses["429"]["headers"]["Retry-After"]["required"] is True, path
        assert {"RateLimit", "RateLimit-Policy", "X-RateLimit-Remaining"} <= set(responses["200"]["headers"])
        assert "503" in responses, path
        assert "499" not in responses, path


def test_statuses_of_the_http_layer_and_499_are_never_documented(document: dict[str, Any]) -> None:
    for path, method, operation in operations(document):
        assert not {"408", "431", "499"} & set(operation["responses"]), (method, path)


def test_401_documents_www_authenticate(document: dict[str, Any]) -> None:
    for path, method, operation in operations(document):
        if "401" in operation["responses"]:
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"], (method, path)


def test_streamed_answers_have_their_media_types(document: dict[str, Any]) -> None:
    def media_types(path: str) -> set[str]:
        return set(document["paths"][path]["post"]["responses"]["200"]["content"])

    assert media_types("/chat/stream") == {"application/x-ndjson"}
    assert media_types("/chat") == {"application/json"}
    assert media_types("/api/generate") == {"application/json", "application/x-ndjson"}
    assert media_types("/api/pull") == {"application/json", "application/x-ndjson"}
    assert media_types("/api/embed") == {"application/json"}
    assert media_types("/v1/chat/completions") == {"application/json", "text/event-stream"}
    assert media_types("/v1/embeddings") == {"application/json"}


def test_key_management_documents_its_query_parameters_and_its_optional_body(
    document: dict[str, Any],
) -> None:
    create = document["paths"]["/api/keys"]["post"]
    assert {p["name"] for p in create["parameters"] if p["in"] == "query"} == {"user_id", "name", "plan"}
    assert create["requestBody"]["required"] is False


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/api/keys", {"GET", "POST", "OPTIONS"}),
        ("/api/plans/x", {"GET", "PUT", "PATCH", "DELETE", "OPTIONS"}),
        ("/api/users/alice", {"GET", "PUT", "OPTIONS"}),
        ("/api/blobs/sha256:00", {"POST", "HEAD", "OPTIONS"}),
        ("/", {"GET", "HEAD", "OPTIONS"}),
        ("/api/keys/1", {"DELETE", "OPTIONS"}),
    ],
)
def test_options_allows_every_method_of_a_path(app: Litestar, path: str, methods: set[str]) -> None:
    # No lifespan: OPTIONS touches nothing of the container.
    client = TestClient(app)
    response = client.options(path)

    assert response.status_code == 204
    assert set(response.headers["allow"].split(", ")) == methods
