"""Members on /chat and /chat/stream: both header styles, every 401, revocation, other users' keys."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import GatewayProcess

ENDPOINTS = ["/chat", "/chat/stream"]
HIGH_LIMITS = {"ANON_RATE_LIMIT": "100000/60", "MEMBER_RATE_LIMIT": "100000/60"}


@pytest.fixture(scope="module")
def module_ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory, module_ollama: FakeOllama) -> Iterator[GatewayProcess]:
    """No admin token (this process is the admin through loopback); limits out of the way."""
    workdir = tmp_path_factory.mktemp("auth-gateway")
    with GatewayProcess(workdir, ollama_url=module_ollama.url, env=HIGH_LIMITS) as gateway:
        yield gateway


def create_key(gate: GatewayProcess, user_id: str) -> dict[str, Any]:
    response = httpx.post(gate.url + "/api/keys", params={"user_id": user_id}, timeout=10)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def post(
    gate: GatewayProcess, endpoint: str, headers: dict[str, str], message: str = "hello"
) -> httpx.Response:
    return httpx.post(gate.url + endpoint, json={"message": message}, headers=headers, timeout=10)


def tier_of(response: httpx.Response) -> str:
    """The tier a response was served as: its rate-limit policy names it, JSON or stream alike."""
    return response.headers["RateLimit-Policy"].split(";")[0].strip('"')


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
def test_a_key_in_either_header_makes_the_caller_a_member(gate: GatewayProcess, style: str) -> None:
    key = create_key(gate, f"member-{style}")["key"]
    headers = {"X-API-Key": key} if style == "x-api-key" else {"Authorization": f"Bearer {key}"}

    answer = post(gate, "/chat", headers)
    streamed = post(gate, "/chat/stream", headers, "one two")

    assert answer.status_code == 200
    body = answer.json()
    assert (body["user"], body["tier"]) == (f"member-{style}", "member")
    assert body["response"]["response"] == "Echo: hello"
    assert tier_of(answer) == "member"
    assert streamed.status_code == 200 and tier_of(streamed) == "member"
    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    assert '"done":true' in streamed.text.splitlines()[-1]


def test_no_key_is_anonymous(gate: GatewayProcess) -> None:
    answer = post(gate, "/chat", {})

    assert answer.status_code == 200
    assert (answer.json()["user"], answer.json()["tier"]) == ("anonymous", "anonymous")


def test_the_bearer_scheme_name_is_case_insensitive(gate: GatewayProcess) -> None:
    key = create_key(gate, "casual")["key"]

    answer = post(gate, "/chat", {"Authorization": f"bearer {key}"})

    assert answer.status_code == 200 and answer.json()["user"] == "casual"


WELL_FORMED_UNKNOWN = "oa-" + "Z" * 43

BAD_CREDENTIALS: dict[str, dict[str, str]] = {
    "unknown key in X-API-Key": {"X-API-Key": WELL_FORMED_UNKNOWN},
    "unknown key as Bearer": {"Authorization": f"Bearer {WELL_FORMED_UNKNOWN}"},
    "key too short": {"X-API-Key": "oa-short"},
    "not a key at all": {"X-API-Key": "hunter2"},
    "wrong prefix": {"Authorization": "Bearer sk-" + "a" * 43},
    "forbidden characters": {"X-API-Key": "oa-" + "a" * 30 + "+/=!"},
    "empty X-API-Key": {"X-API-Key": ""},
    "empty Bearer": {"Authorization": "Bearer"},
    "empty Authorization": {"Authorization": ""},
    "Basic scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
    "key without a scheme": {"Authorization": WELL_FORMED_UNKNOWN},
    "Token scheme": {"Authorization": f"Token {WELL_FORMED_UNKNOWN}"},
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("headers", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
def test_a_wrong_credential_is_401_never_anonymous(
    gate: GatewayProcess, module_ollama: FakeOllama, endpoint: str, headers: dict[str, str]
) -> None:
    upstream_before = len(module_ollama.seen.generate_requests)

    response = post(gate, endpoint, headers)

    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["detail"]
    assert len(module_ollama.seen.generate_requests) == upstream_before  # nothing reached Ollama


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_revoked_key_is_refused_on_its_very_next_request(gate: GatewayProcess, endpoint: str) -> None:
    created = create_key(gate, f"soon-gone{endpoint.replace('/', '-')}")
    headers = {"X-API-Key": created["key"]}
    assert post(gate, endpoint, headers).status_code == 200  # the key is now in the gateway's cache

    revoked = httpx.delete(f"{gate.url}/api/keys/{created['id']}", timeout=10)
    after = post(gate, endpoint, headers)
    bearer_after = post(gate, endpoint, {"Authorization": f"Bearer {created['key']}"})

    assert revoked.status_code == 200
    assert after.status_code == 401 and bearer_after.status_code == 401
    assert after.headers["WWW-Authenticate"].startswith("Bearer")
    assert "revoked" in after.json()["detail"]


def test_the_secret_never_appears_in_a_401(gate: GatewayProcess) -> None:
    created = create_key(gate, "leak-check")
    assert httpx.delete(f"{gate.url}/api/keys/{created['id']}", timeout=10).status_code == 200

    response = post(gate, "/chat", {"X-API-Key": created["key"]})

    assert response.status_code == 401
    assert created["key"] not in response.text
    assert created["key"] not in str(response.headers)


def test_a_member_cannot_touch_another_users_key(gate: GatewayProcess) -> None:
    mallory = create_key(gate, "mallory")
    alice = create_key(gate, "alice")
    as_mallory = {"X-API-Key": mallory["key"]}
    alice_key_url = f"{gate.url}/api/keys/{alice['id']}"

    revoke_named = httpx.delete(alice_key_url, params={"user_id": "alice"}, headers=as_mallory, timeout=10)
    revoke_unnamed = httpx.delete(alice_key_url, headers=as_mallory, timeout=10)
    listing = httpx.get(gate.url + "/api/keys", params={"user_id": "alice"}, headers=as_mallory, timeout=10)
    creating = httpx.post(gate.url + "/api/keys", params={"user_id": "alice"}, headers=as_mallory, timeout=10)

    assert revoke_named.status_code == 403 and revoke_named.json()["detail"]
    assert revoke_unnamed.status_code == 404  # a member acts on its own keys only: alice's is not one
    assert listing.status_code == 403 and alice["key"] not in listing.text
    assert creating.status_code == 403
    still = post(gate, "/chat", {"X-API-Key": alice["key"]})
    assert still.status_code == 200 and still.json()["user"] == "alice"
