"""Who may manage keys and read usage: the admin token, the loopback rule, members, remote peers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.integration.conftest import gateway_per_module
from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import HIGH_LIMITS, GatewayProcess
from tests.support.netns import NamespaceUnavailable, VethNamespace, veth_namespace

ADMIN_TOKEN = "s3cret-admin-token-for-tests"
ADMIN = {"X-Admin-Token": ADMIN_TOKEN}

# (method, path, params) of every management call; each needs an admin (or a member for itself).
MANAGEMENT_CALLS = [
    ("POST", "/api/keys", {"user_id": "someone"}),
    ("GET", "/api/keys", {}),
    ("GET", "/api/keys", {"user_id": "someone"}),
    ("DELETE", "/api/keys/1", {}),
    ("GET", "/api/usage", {}),
]
CALL_IDS = ["create", "list-all", "list-user", "revoke", "usage"]


def assert_explains_admin_access(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    detail = response.json()["detail"]
    assert "OLLAMA_GATE_ADMIN_TOKEN" in detail and "X-Admin-Token" in detail, detail


tokened = gateway_per_module(HIGH_LIMITS | {"ADMIN_TOKEN": ADMIN_TOKEN})
tokenless = gateway_per_module(HIGH_LIMITS)


def request(
    gate: GatewayProcess, call: tuple[str, str, dict[str, str]], headers: dict[str, str]
) -> httpx.Response:
    method, path, params = call
    return httpx.request(method, gate.url + path, params=params, headers=headers, timeout=10)


# -- OLLAMA_GATE_ADMIN_TOKEN set ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"Bearer {ADMIN_TOKEN}"}, {"X-Admin-Token": ADMIN_TOKEN}],
    ids=["bearer", "x-admin-token"],
)
def test_the_admin_token_in_either_header_is_an_admin(
    tokened: GatewayProcess, headers: dict[str, str]
) -> None:
    created = tokened.create_key("by-token", headers=headers)
    listed = httpx.get(tokened.url + "/api/keys", headers=headers, timeout=10)
    usage = httpx.get(tokened.url + "/api/usage", headers=headers, timeout=10)
    revoked = httpx.delete(f"{tokened.url}/api/keys/{created['id']}", headers=headers, timeout=10)

    assert created["user_id"] == "by-token"
    assert listed.status_code == 200 and created["id"] in [key["id"] for key in listed.json()["keys"]]
    assert usage.status_code == 200
    assert revoked.status_code == 200


@pytest.mark.parametrize("call", MANAGEMENT_CALLS, ids=CALL_IDS)
def test_with_a_token_configured_loopback_without_it_is_refused_with_help(
    tokened: GatewayProcess, call: tuple[str, str, dict[str, str]]
) -> None:
    assert_explains_admin_access(request(tokened, call, {}))


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer not-the-token"},
        {"X-Admin-Token": "not-the-token"},
        {"X-Admin-Token": ADMIN_TOKEN + "x"},
        {"X-Admin-Token": ""},
    ],
    ids=["bearer", "x-admin-token", "longer", "empty"],
)
def test_a_wrong_admin_token_is_refused(tokened: GatewayProcess, headers: dict[str, str]) -> None:
    response = httpx.post(tokened.url + "/api/keys", params={"user_id": "x"}, headers=headers, timeout=10)

    assert response.status_code == 403
    assert response.json()["detail"]


def test_a_member_manages_its_own_keys(tokened: GatewayProcess) -> None:
    first = tokened.create_key("self-service", headers=ADMIN)
    other = tokened.create_key("bystander", headers=ADMIN)
    as_member = {"X-API-Key": first["key"]}

    implicit = httpx.post(tokened.url + "/api/keys", json={"name": "phone"}, headers=as_member, timeout=10)
    explicit = httpx.post(
        tokened.url + "/api/keys", params={"user_id": "self-service"}, headers=as_member, timeout=10
    )
    listing = httpx.get(tokened.url + "/api/keys", headers=as_member, timeout=10)
    revoked = httpx.delete(f"{tokened.url}/api/keys/{implicit.json()['id']}", headers=as_member, timeout=10)
    foreign = httpx.delete(f"{tokened.url}/api/keys/{other['id']}", headers=as_member, timeout=10)

    assert implicit.status_code == 201
    assert (implicit.json()["user_id"], implicit.json()["name"]) == ("self-service", "phone")
    assert explicit.status_code == 201 and explicit.json()["user_id"] == "self-service"
    assert listing.status_code == 200
    listed = listing.json()["keys"]
    assert {key["user_id"] for key in listed} == {"self-service"}
    assert [key["id"] for key in listed] == [explicit.json()["id"], implicit.json()["id"], first["id"]]
    assert revoked.status_code == 200 and revoked.json() == {"id": implicit.json()["id"], "revoked": True}
    assert foreign.status_code == 404
    new_key = tokened.chat("hi", {"Authorization": f"Bearer {explicit.json()['key']}"})
    assert new_key.status_code == 200 and new_key.json()["user"] == "self-service"


def test_a_member_key_does_not_open_other_users_usage(tokened: GatewayProcess) -> None:
    key = tokened.create_key("curious", headers=ADMIN)

    response = httpx.get(
        tokened.url + "/api/usage", params={"user_id": "self-service"}, headers={"X-API-Key": key["key"]}
    )

    assert response.status_code == 403


# -- no admin token: the loopback rule ----------------------------------------------------------------


@pytest.mark.parametrize("call", MANAGEMENT_CALLS, ids=CALL_IDS)
def test_without_a_token_a_direct_loopback_caller_is_an_admin(
    tokenless: GatewayProcess, call: tuple[str, str, dict[str, str]]
) -> None:
    response = request(tokenless, call, {})

    # Revoking key 1 may find nothing to revoke: 404 still says the caller was let in.
    assert response.status_code in ((404, 200) if call[0] == "DELETE" else (200, 201)), response.text


RELAY_HEADERS = {
    "x-forwarded-for": {"X-Forwarded-For": "203.0.113.9"},
    "x-forwarded-for loopback": {"X-Forwarded-For": "127.0.0.1"},
    "forwarded": {"Forwarded": "for=203.0.113.9;proto=https"},
    "forwarded loopback": {"Forwarded": "for=127.0.0.1"},
    "x-real-ip": {"X-Real-IP": "127.0.0.1"},
    "via": {"Via": "1.1 nginx"},
}


@pytest.mark.parametrize("headers", RELAY_HEADERS.values(), ids=RELAY_HEADERS.keys())
@pytest.mark.parametrize("call", MANAGEMENT_CALLS, ids=CALL_IDS)
def test_a_relayed_loopback_request_is_not_local(
    tokenless: GatewayProcess, call: tuple[str, str, dict[str, str]], headers: dict[str, str]
) -> None:
    assert_explains_admin_access(request(tokenless, call, headers))


# -- the admin token on inference ----------------------------------------------------------------------

# Tiny quotas: anything the admin does beyond them shows that the admin is not rate-limited.
tight_tokened = gateway_per_module(
    {"ADMIN_TOKEN": ADMIN_TOKEN, "ANON_RATE_LIMIT": "2/60", "MEMBER_RATE_LIMIT": "2/60"},
    upstream="module_ollama_server",
)
tight_tokenless = gateway_per_module(
    {"ANON_RATE_LIMIT": "2/60", "MEMBER_RATE_LIMIT": "2/60"}, upstream="module_ollama_server"
)


def test_one_ollama_client_with_the_admin_token_both_manages_and_uses_models(
    tight_tokened: GatewayProcess,
) -> None:
    """The ollama client sends the token as its Bearer on every call: listing, pulling and chatting."""
    client = ollama.Client(host=tight_tokened.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert client.pull("smollm:latest").status == "success"
    assert "smollm:latest" in [m.model for m in client.list().models]
    answers = [
        client.chat("smollm:latest", messages=[{"role": "user", "content": f"admin {n}"}]) for n in range(5)
    ]
    assert all(answer.done for answer in answers)  # 5 > the quota of 2: the admin has none
    direct = [
        httpx.post(tight_tokened.url + "/chat", json={"message": "hi"}, headers=ADMIN, timeout=10)
        for _ in range(3)
    ]
    assert [r.status_code for r in direct] == [200] * 3
    assert direct[0].json()["user"] == "admin" and direct[0].json()["tier"] == "admin"
    assert "RateLimit" not in direct[0].headers
    rows = tight_tokened.usage_rows(8, headers=ADMIN, where=lambda row: row["user"] == "admin")
    assert len(rows) == 8
    assert {(row["user"], row["tier"], row["key_id"]) for row in rows} == {("admin", "admin", None)}


def test_a_wrong_admin_token_on_inference_is_401(tight_tokened: GatewayProcess) -> None:
    for headers in ({"Authorization": "Bearer not-the-token"}, {"X-Admin-Token": "not-the-token"}):
        response = httpx.post(
            tight_tokened.url + "/chat", json={"message": "hi"}, headers=headers, timeout=10
        )
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_without_a_token_loopback_inference_stays_anonymous(tight_tokenless: GatewayProcess) -> None:
    """The loopback rule opens the management paths only: chatting from the box is still anonymous."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.20"), timeout=10) as client:
        statuses = [client.post(tight_tokenless.url + "/chat", json={"message": "hi"}) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[0].json()["tier"] == "anonymous"


# -- a real remote peer: a network namespace on a veth pair made by the test --------------------------


@pytest.fixture(scope="module")
def remote() -> Iterator[VethNamespace]:
    try:
        with veth_namespace() as namespace:
            yield namespace
    except NamespaceUnavailable as error:
        pytest.skip(f"cannot create a network namespace for a non-loopback peer: {error}")


@pytest.fixture(scope="module")
def exposed(
    tmp_path_factory: pytest.TempPathFactory, module_ollama: FakeOllama, remote: VethNamespace
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two gateways on the host side of the veth pair: without and with an admin token."""
    workdir: Path = tmp_path_factory.mktemp("exposed")
    tokenless_env = HIGH_LIMITS
    tokened_env = HIGH_LIMITS | {"ADMIN_TOKEN": ADMIN_TOKEN}
    with (
        GatewayProcess(
            workdir / "open", module_ollama.url, tokenless_env, host=remote.host_address
        ) as without,
        GatewayProcess(
            workdir / "locked", module_ollama.url, tokened_env, host=remote.host_address
        ) as with_token,
    ):
        yield without, with_token


@pytest.mark.parametrize("call", MANAGEMENT_CALLS, ids=CALL_IDS)
def test_a_remote_peer_without_credentials_is_refused_with_help(
    remote: VethNamespace,
    exposed: tuple[GatewayProcess, GatewayProcess],
    call: tuple[str, str, dict[str, str]],
) -> None:
    method, path, params = call
    for gate in exposed:
        url = str(httpx.URL(gate.url + path, params=params))

        status, body = remote.http(method, url)

        assert status == 403, (gate.env.get("OLLAMA_GATE_ADMIN_TOKEN"), body)
        assert "OLLAMA_GATE_ADMIN_TOKEN" in json.loads(body)["detail"]


def test_a_remote_peer_with_the_admin_token_is_an_admin(
    remote: VethNamespace, exposed: tuple[GatewayProcess, GatewayProcess]
) -> None:
    _, with_token = exposed

    status, body = remote.http(
        "POST", with_token.url + "/api/keys?user_id=remote-admin", {"X-Admin-Token": ADMIN_TOKEN}
    )

    assert status == 201, body
    assert json.loads(body)["user_id"] == "remote-admin"


def test_a_remote_member_manages_its_own_keys_and_chats(
    remote: VethNamespace, exposed: tuple[GatewayProcess, GatewayProcess]
) -> None:
    _, gate = exposed  # bound to the veth address only: even this process needs the token here
    key = gate.create_key("remote-member", headers=ADMIN)
    as_member = {"X-API-Key": key["key"]}
    hello = json.dumps({"message": "hi"})

    listed_status, listed = remote.http("GET", gate.url + "/api/keys", as_member)
    foreign_status, _ = remote.http("GET", gate.url + "/api/keys?user_id=other", as_member)
    chat_status, chat = remote.http(
        "POST", gate.url + "/chat", {"Authorization": f"Bearer {key['key']}"}, hello
    )
    anon_status, anon = remote.http("POST", gate.url + "/chat", {}, hello)

    assert listed_status == 200 and [k["id"] for k in json.loads(listed)["keys"]] == [key["id"]]
    assert foreign_status == 403
    assert chat_status == 200 and json.loads(chat)["user"] == "remote-member"
    assert anon_status == 200 and json.loads(anon)["tier"] == "anonymous"
    assert usage_client_ips(gate, expected_rows=2) == {remote.peer_address}


def usage_client_ips(gate: GatewayProcess, expected_rows: int) -> set[str]:
    """The client addresses of the usage rows, once the background writer has stored `expected_rows`."""
    rows = gate.usage_rows(expected_rows, headers=ADMIN)
    assert len(rows) == expected_rows, rows
    return {row["client_ip"] for row in rows}
