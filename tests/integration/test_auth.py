"""Members on /chat and /chat/stream: both header styles, every 401, revocation, other users' keys."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import gateway_per_module
from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import HIGH_LIMITS, GatewayProcess

ENDPOINTS = ["/chat", "/chat/stream"]

# No admin token (this process is the admin through loopback); limits out of the way.
gate = gateway_per_module(HIGH_LIMITS)


def tier_of(response: httpx.Response) -> str:
    """The tier a response was served as: its rate-limit policy names it, JSON or stream alike."""
    return response.headers["RateLimit-Policy"].split(";")[0].strip('"')


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
def test_a_key_in_either_header_makes_the_caller_a_member(gate: GatewayProcess, style: str) -> None:
    key = gate.create_key(f"member-{style}")["key"]
    headers = {"X-API-Key": key} if style == "x-api-key" else {"Authorization": f"Bearer {key}"}

    answer = gate.chat("hello", headers)
    streamed = gate.chat("one two", headers, "/chat/stream")

    assert answer.status_code == 200
    body = answer.json()
    assert (body["user"], body["tier"]) == (f"member-{style}", "member")
    assert body["response"]["response"] == "Echo: hello"
    assert tier_of(answer) == "member"
    assert streamed.status_code == 200 and tier_of(streamed) == "member"
    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    assert '"done":true' in streamed.text.splitlines()[-1]


def test_no_key_is_anonymous(gate: GatewayProcess) -> None:
    answer = gate.chat("hello", {})

    assert answer.status_code == 200
    assert (answer.json()["user"], answer.json()["tier"]) == ("anonymous", "anonymous")


def test_the_bearer_scheme_name_is_case_insensitive(gate: GatewayProcess) -> None:
    key = gate.create_key("casual")["key"]

    answer = gate.chat("hello", {"Authorization": f"bearer {key}"})

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

    response = gate.chat("hello", headers, endpoint)

    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["detail"]
    assert len(module_ollama.seen.generate_requests) == upstream_before  # nothing reached Ollama


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_revoked_key_is_refused_on_its_very_next_request(gate: GatewayProcess, endpoint: str) -> None:
    created = gate.create_key(f"soon-gone{endpoint.replace('/', '-')}")
    headers = {"X-API-Key": created["key"]}
    assert gate.chat("hello", headers, endpoint).status_code == 200  # the key is now in the gateway's cache

    revoked = httpx.delete(f"{gate.url}/api/keys/{created['id']}", timeout=10)
    after = gate.chat("hello", headers, endpoint)
    bearer_after = gate.chat("hello", {"Authorization": f"Bearer {created['key']}"}, endpoint)

    assert revoked.status_code == 200
    assert after.status_code == 401 and bearer_after.status_code == 401
    assert after.headers["WWW-Authenticate"].startswith("Bearer")
    assert "revoked" in after.json()["detail"]


def test_the_secret_never_appears_in_a_401(gate: GatewayProcess) -> None:
    created = gate.create_key("leak-check")
    assert httpx.delete(f"{gate.url}/api/keys/{created['id']}", timeout=10).status_code == 200

    response = gate.chat("hello", {"X-API-Key": created["key"]})

    assert response.status_code == 401
    assert created["key"] not in response.text
    assert created["key"] not in str(response.headers)


def test_a_member_cannot_touch_another_users_key(gate: GatewayProcess) -> None:
    mallory = gate.create_key("mallory")
    alice = gate.create_key("alice")
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
    still = gate.chat("hello", {"X-API-Key": alice["key"]})
    assert still.status_code == 200 and still.json()["user"] == "alice"
