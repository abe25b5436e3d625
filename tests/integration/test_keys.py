"""Key management on the real gateway (SQLite): the HTTP API, the CLI, restarts, a database that is down."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import gateway_per_module
from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import HIGH_LIMITS, GatewayProcess

KEY_PATTERN = re.compile(r"oa-[A-Za-z0-9_-]{32,}")
LISTED_FIELDS = {
    "id",
    "user_id",
    "name",
    "prefix",
    "created_at",
    "last_used_at",
    "revoked_at",
    "active",
    "plan",
}
# The authenticator re-reads a cached key every 5 s; a change made by the CLI shows within that.
REVALIDATION_POLLS = 40
REVALIDATION_POLL_INTERVAL = 0.2

# No admin token: this test process, on loopback, is the admin. The keys tests are not about quotas.
gate = gateway_per_module(HIGH_LIMITS)


def list_keys(gate: GatewayProcess, user_id: str | None = None) -> list[dict[str, Any]]:
    params = {"user_id": user_id} if user_id is not None else {}
    response = httpx.get(gate.url + "/api/keys", params=params, timeout=10)
    assert response.status_code == 200, response.text
    keys: list[dict[str, Any]] = response.json()["keys"]
    return keys


def chat_as(gate: GatewayProcess, key: str) -> httpx.Response:
    return gate.chat("hello", {"X-API-Key": key})


def assert_utc_timestamp(text: str) -> None:
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() is not None and parsed.utcoffset() == UTC.utcoffset(None), text


# -- create -------------------------------------------------------------------------------------------


def test_create_answers_201_with_the_secret_and_its_metadata(gate: GatewayProcess) -> None:
    response = httpx.post(gate.url + "/api/keys", params={"user_id": "abc", "name": "MyKey"}, timeout=10)

    assert response.status_code == 201
    created = response.json()
    assert set(created) == {"id", "user_id", "name", "key", "prefix", "created_at", "plan"}
    assert created["plan"] is None  # the key follows its user's plan
    assert isinstance(created["id"], int)
    assert (created["user_id"], created["name"]) == ("abc", "MyKey")
    assert KEY_PATTERN.fullmatch(created["key"]), created["key"]
    assert created["prefix"].startswith("oa-") and len(created["prefix"]) > len("oa-")
    assert created["key"].startswith(created["prefix"]) and len(created["prefix"]) < len(created["key"]) - 16
    assert_utc_timestamp(created["created_at"])


def test_each_key_is_a_new_secret(gate: GatewayProcess) -> None:
    first, second = gate.create_key("twice"), gate.create_key("twice")

    assert first["key"] != second["key"] and first["id"] != second["id"]


def test_create_accepts_a_json_body_and_names_the_key_default_when_unnamed(gate: GatewayProcess) -> None:
    named = httpx.post(gate.url + "/api/keys", json={"user_id": "body-user", "name": "laptop"}, timeout=10)
    unnamed = httpx.post(gate.url + "/api/keys", json={"user_id": "body-user"}, timeout=10)

    assert named.status_code == 201 and unnamed.status_code == 201
    assert (named.json()["user_id"], named.json()["name"]) == ("body-user", "laptop")
    assert unnamed.json()["name"] == "default"
    assert KEY_PATTERN.fullmatch(named.json()["key"])


@pytest.mark.parametrize("user_id", ["a", "x" * 128, "Jane.Doe_42@example-corp.org"])
def test_create_accepts_every_allowed_user_id(gate: GatewayProcess, user_id: str) -> None:
    assert gate.create_key(user_id)["user_id"] == user_id


@pytest.mark.parametrize(
    "params",
    [
        {"user_id": ""},
        {"user_id": "x" * 129},
        {"user_id": "two words"},
        {"user_id": "a/b"},
        {"user_id": "zoë"},
        {"user_id": "semi;colon"},
        {"name": "no user"},
        {"user_id": "ok", "name": "n" * 101},
        {"user_id": "ok", "name": "   "},
    ],
    ids=[
        "empty",
        "too-long",
        "space",
        "slash",
        "non-ascii",
        "semicolon",
        "missing",
        "name-too-long",
        "blank-name",
    ],
)
def test_create_rejects_an_invalid_user_id_or_name_with_400(
    gate: GatewayProcess, params: dict[str, str]
) -> None:
    response = httpx.post(gate.url + "/api/keys", params=params, timeout=10)

    assert response.status_code == 400, response.text
    assert response.json()["detail"]


def test_create_rejects_a_malformed_json_body_with_400(gate: GatewayProcess) -> None:
    response = httpx.post(
        gate.url + "/api/keys", content=b"{not json", headers={"Content-Type": "application/json"}, timeout=10
    )

    assert response.status_code == 400
    assert response.json()["detail"]


# -- list ---------------------------------------------------------------------------------------------


def test_list_shows_a_users_keys_newest_first_and_never_a_secret(gate: GatewayProcess) -> None:
    created = [gate.create_key("lister", name) for name in ("first", "second", "third")]
    gate.create_key("someone-else")

    response = httpx.get(gate.url + "/api/keys", params={"user_id": "lister"}, timeout=10)

    assert response.status_code == 200
    listed = response.json()["keys"]
    assert [key["id"] for key in listed] == [key["id"] for key in reversed(created)]
    assert [key["name"] for key in listed] == ["third", "second", "first"]
    for key in listed:
        assert set(key) == LISTED_FIELDS
        assert key["user_id"] == "lister" and key["active"] is True and key["revoked_at"] is None
    assert {key["prefix"] for key in listed} == {key["prefix"] for key in created}
    for key in created:
        assert key["key"] not in response.text


def test_list_without_user_id_shows_every_users_keys_to_an_admin(gate: GatewayProcess) -> None:
    mine, theirs = gate.create_key("everyone-1"), gate.create_key("everyone-2")

    listed = list_keys(gate)

    ids = [key["id"] for key in listed]
    assert mine["id"] in ids and theirs["id"] in ids
    assert ids == sorted(ids, reverse=True)


def test_list_rejects_an_invalid_user_id_with_400(gate: GatewayProcess) -> None:
    response = httpx.get(gate.url + "/api/keys", params={"user_id": "no spaces please"}, timeout=10)

    assert response.status_code == 400


# -- revoke -------------------------------------------------------------------------------------------


def test_revoke_marks_the_key_inactive_and_is_idempotent(gate: GatewayProcess) -> None:
    key = gate.create_key("revoker")
    url = f"{gate.url}/api/keys/{key['id']}"

    first = httpx.delete(url, params={"user_id": "revoker"}, timeout=10)
    listed_once = list_keys(gate, "revoker")
    second = httpx.delete(url, params={"user_id": "revoker"}, timeout=10)
    listed_twice = list_keys(gate, "revoker")

    assert first.status_code == 200 and first.json() == {"id": key["id"], "revoked": True}
    assert second.status_code == 200 and second.json() == {"id": key["id"], "revoked": True}
    (entry,) = listed_once
    assert entry["active"] is False
    assert_utc_timestamp(entry["revoked_at"])
    assert listed_twice == listed_once  # the second revocation changed nothing, not even the time


def test_revoke_without_user_id_is_allowed_to_an_admin(gate: GatewayProcess) -> None:
    key = gate.create_key("admin-revoked")

    response = httpx.delete(f"{gate.url}/api/keys/{key['id']}", timeout=10)

    assert response.status_code == 200
    assert chat_as(gate, key["key"]).status_code == 401


def test_revoke_of_an_unknown_key_is_404(gate: GatewayProcess) -> None:
    response = httpx.delete(f"{gate.url}/api/keys/987654", params={"user_id": "nobody"}, timeout=10)

    assert response.status_code == 404
    assert response.json()["detail"]


def test_revoke_of_another_users_key_is_404_and_leaves_it_working(gate: GatewayProcess) -> None:
    key = gate.create_key("owner")

    response = httpx.delete(f"{gate.url}/api/keys/{key['id']}", params={"user_id": "intruder"}, timeout=10)

    assert response.status_code == 404
    assert list_keys(gate, "owner")[0]["active"] is True
    assert chat_as(gate, key["key"]).status_code == 200


# -- persistence --------------------------------------------------------------------------------------


def test_keys_survive_a_restart_of_the_gateway(tmp_path: Path, module_ollama: FakeOllama) -> None:
    with GatewayProcess(tmp_path, ollama_url=module_ollama.url, env=HIGH_LIMITS) as first:
        kept = first.create_key("durable", "kept")
        revoked = first.create_key("durable", "revoked")
        assert httpx.delete(f"{first.url}/api/keys/{revoked['id']}", timeout=10).status_code == 200
        assert chat_as(first, kept["key"]).status_code == 200

    with GatewayProcess(tmp_path, ollama_url=module_ollama.url, env=HIGH_LIMITS) as second:
        answer = chat_as(second, kept["key"])
        refused = chat_as(second, revoked["key"])
        listed = list_keys(second, "durable")

    assert answer.status_code == 200
    assert (answer.json()["user"], answer.json()["tier"]) == ("durable", "member")
    assert refused.status_code == 401
    assert [(key["id"], key["active"]) for key in listed] == [(revoked["id"], False), (kept["id"], True)]


# -- the CLI ------------------------------------------------------------------------------------------


def test_cli_creates_a_key_that_the_running_gateway_accepts(gate: GatewayProcess) -> None:
    result = gate.run_cli("keys", "create", "--user-id", "cli-user", "--name", "from-cli")

    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    secret = created["key"]
    assert KEY_PATTERN.fullmatch(secret)
    assert (created["user_id"], created["name"]) == ("cli-user", "from-cli")
    assert result.stdout.count(secret) == 1 and secret not in result.stderr
    answer = chat_as(gate, secret)
    assert answer.status_code == 200
    assert (answer.json()["user"], answer.json()["tier"]) == ("cli-user", "member")
    assert [key["id"] for key in list_keys(gate, "cli-user")] == [created["id"]]


def test_cli_lists_keys_without_their_secrets(gate: GatewayProcess) -> None:
    api_key = gate.create_key("cli-lister", "over-http")

    for_user = gate.run_cli("keys", "list", "--user-id", "cli-lister")
    everything = gate.run_cli("keys", "list")

    assert for_user.returncode == 0 and everything.returncode == 0
    (listed,) = json.loads(for_user.stdout)["keys"]
    assert listed["id"] == api_key["id"] and listed["name"] == "over-http" and listed["active"] is True
    assert api_key["key"] not in for_user.stdout + everything.stdout
    assert api_key["id"] in [key["id"] for key in json.loads(everything.stdout)["keys"]]


def test_cli_revocation_reaches_the_running_gateway_within_its_revalidation_interval(
    gate: GatewayProcess,
) -> None:
    key = gate.create_key("cli-revoked")
    assert chat_as(gate, key["key"]).status_code == 200  # now cached by the gateway

    result = gate.run_cli("keys", "revoke", str(key["id"]))

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"id": key["id"], "revoked": True}
    statuses = []
    for _ in range(REVALIDATION_POLLS):  # ~8 s, beyond the gateway's 5 s revalidation interval
        statuses.append(chat_as(gate, key["key"]).status_code)
        if statuses[-1] != 200:
            break
        time.sleep(REVALIDATION_POLL_INTERVAL)
    assert statuses[-1] == 401, statuses
    assert set(statuses[:-1]) <= {200}


def test_cli_revoke_of_an_unknown_key_fails_with_a_message(gate: GatewayProcess) -> None:
    result = gate.run_cli("keys", "revoke", "424242")

    assert result.returncode != 0
    assert "424242" in result.stderr


# -- database unavailable -----------------------------------------------------------------------------


def test_a_database_that_cannot_be_opened_gives_503_on_keys_but_anonymous_chat_works(
    tmp_path: Path, module_ollama: FakeOllama
) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("a regular file, so no database can live under it")
    env = HIGH_LIMITS | {"DATABASE_URL": f"sqlite+aiosqlite:///{blocker}/x.db"}
    unavailable = {"detail": "database unavailable"}
    some_key = "oa-" + "A" * 43

    with GatewayProcess(tmp_path / "run", ollama_url=module_ollama.url, env=env) as down:
        answers = {
            "create": httpx.post(down.url + "/api/keys", params={"user_id": "u"}, timeout=10),
            "list": httpx.get(down.url + "/api/keys", timeout=10),
            "revoke": httpx.delete(down.url + "/api/keys/1", timeout=10),
            "member chat": chat_as(down, some_key),
            "member stream": httpx.post(
                down.url + "/chat/stream",
                json={"message": "hi"},
                headers={"Authorization": f"Bearer {some_key}"},
                timeout=10,
            ),
        }
        anonymous = httpx.post(down.url + "/chat", json={"message": "still here"}, timeout=10)
        # Its usage row can never be written: a clean stop would retry for the writer's whole grace period.
        down.kill()

    for what, response in answers.items():
        assert (what, response.status_code, response.json()) == (what, 503, unavailable)
    assert anonymous.status_code == 200
    assert anonymous.json()["response"]["response"] == "Echo: still here"
