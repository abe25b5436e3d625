"""Input an attacker sends: deep nesting, ids no database can hold, reserved user names. Never a 500;
and who may call a path is decided before what it is sent is read."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.integration.conftest import gateway_per_module
from tests.support.gateway import HIGH_LIMITS, GatewayProcess

MODEL = "smollm:latest"
ADMIN_TOKEN = "bad-input-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

gate = gateway_per_module(HIGH_LIMITS | {"ADMIN_TOKEN": ADMIN_TOKEN}, upstream="module_ollama_server")


NESTED = "__nested__"


def deep(levels: int) -> str:
    """`levels` arrays inside each other, as JSON text (no JSON library can even encode 1,000 of them)."""
    return "[" * levels + "]" * levels


def with_nested(body: dict[str, Any], levels: int) -> bytes:
    """`body` as JSON, with the `NESTED` placeholder replaced by `deep(levels)`."""
    return json.dumps(body).replace(json.dumps(NESTED), deep(levels)).encode()


def bodies(nested: Any = NESTED) -> dict[str, dict[str, Any]]:
    """A body per path with `nested` inside (where tool schemas and options go)."""
    message = [{"role": "user", "content": "hi"}]
    return {
        "/chat": {"message": "hi", "options": {"x": nested}},
        "/chat/stream": {"message": "hi", "options": {"x": nested}},
        "/api/generate": {"model": MODEL, "prompt": "hi", "options": {"x": nested}},
        "/api/chat": {"model": MODEL, "messages": message, "tools": nested},
        "/api/embed": {"model": MODEL, "input": "hi", "options": {"x": nested}},
        "/api/embeddings": {"model": MODEL, "prompt": "hi", "options": {"x": nested}},
        "/api/show": {"model": MODEL, "x": nested},
        "/v1/chat/completions": {"model": MODEL, "messages": message, "tools": nested},
        "/v1/completions": {"model": MODEL, "prompt": "hi", "x": nested},
        "/v1/embeddings": {"model": MODEL, "input": "hi", "x": nested},
    }


def error_message(response: httpx.Response) -> str:
    """The message of an error in whichever API's shape the path answers in."""
    document = response.json()
    if "detail" in document:
        return str(document["detail"])
    error = document["error"]
    return str(error["message"] if isinstance(error, dict) else error)


def post(
    gate: GatewayProcess, path: str, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    headers = {"Content-Type": "application/json", **(headers or {})}
    return httpx.post(gate.url + path, content=body, headers=headers, timeout=10)


@pytest.mark.parametrize("path", list(bodies()))
def test_a_body_nested_a_thousand_deep_is_400_on_every_path(gate: GatewayProcess, path: str) -> None:
    response = post(gate, path, with_nested(bodies()[path], 1000))
    assert response.status_code == 400, response.text
    assert "nested deeper than 64 levels" in error_message(response)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_tool_schema_of_ordinary_depth_goes_through(gate: GatewayProcess, path: str) -> None:
    response = post(gate, path, with_nested(bodies()[path], 20))
    assert response.status_code == 200, response.text


def test_key_creation_refuses_a_stranger_before_it_reads_the_body(gate: GatewayProcess) -> None:
    nested = with_nested({"user_id": "alice", "name": NESTED}, 1000)
    stranger = post(gate, "/api/keys", nested)
    admin = post(gate, "/api/keys", nested, ADMIN)
    assert stranger.status_code == 403, stranger.text
    assert admin.status_code == 400, admin.text
    assert "nested deeper than 64 levels" in admin.json()["detail"]


def test_model_management_refuses_a_stranger_before_it_reads_the_body(gate: GatewayProcess) -> None:
    nested = with_nested({"model": MODEL, "x": NESTED}, 1000)
    stranger = post(gate, "/api/pull", nested)
    admin = post(gate, "/api/pull", nested, ADMIN)
    assert stranger.status_code == 403, stranger.text
    assert admin.status_code == 400, admin.text


@pytest.mark.parametrize("key_id", [2**63, 2**64, 10**40, 0])
def test_a_key_id_beyond_64_bits_is_404(gate: GatewayProcess, key_id: int) -> None:
    response = httpx.delete(f"{gate.url}/api/keys/{key_id}", headers=ADMIN, timeout=10)
    assert response.status_code == 404, response.text
    assert response.json() == {"detail": f"key {key_id} not found"}


@pytest.mark.parametrize("user_id", ["anonymous", "admin", "Admin"])
def test_the_reserved_names_cannot_become_members(gate: GatewayProcess, user_id: str) -> None:
    response = httpx.post(gate.url + "/api/keys", params={"user_id": user_id}, headers=ADMIN, timeout=10)
    assert response.status_code == 400, response.text
    assert "reserved" in response.json()["detail"]
