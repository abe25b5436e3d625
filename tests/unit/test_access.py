"""Who may manage keys and read usage, as a table of cases."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gate.adapters.memory_stores import InMemoryKeyStore
from ollama_gate.domain.access import ADMIN_HELP, Principal, is_local_admin, is_loopback, scope_user
from ollama_gate.domain.errors import Forbidden, InvalidRequest
from ollama_gate.domain.keys import InvalidCredentials
from ollama_gate.services.access import AccessPolicy
from ollama_gate.services.authenticator import Authenticator
from ollama_gate.services.keys import KeyService

ADMIN_TOKEN = "correct-horse-battery-staple"
ALICE_KEY = "<alice's key>"  # replaced by a real key of user "alice" in the test
UNKNOWN_KEY = "oa-" + "u" * 43
ADMIN = Principal.admin()
ALICE = Principal.member("alice")
NOBODY = Principal.nobody()


@dataclass(frozen=True)
class Case:
    admin_token: str | None
    peer: str
    relayed: bool = False
    x_api_key: str | None = None
    authorization: str | None = None
    x_admin_token: str | None = None


CASES: list[tuple[str, Case, Principal | type[Exception]]] = [
    # An admin token is configured: only the token makes an admin.
    ("token as Bearer", Case(ADMIN_TOKEN, "203.0.113.5", authorization=f"Bearer {ADMIN_TOKEN}"), ADMIN),
    ("token as X-Admin-Token", Case(ADMIN_TOKEN, "203.0.113.5", x_admin_token=ADMIN_TOKEN), ADMIN),
    ("token, padded", Case(ADMIN_TOKEN, "203.0.113.5", x_admin_token=f" {ADMIN_TOKEN} "), ADMIN),
    ("token through a proxy", Case(ADMIN_TOKEN, "127.0.0.1", True, x_admin_token=ADMIN_TOKEN), ADMIN),
    (
        "token wins over a key",
        Case(ADMIN_TOKEN, "203.0.113.5", x_api_key=ALICE_KEY, x_admin_token=ADMIN_TOKEN),
        ADMIN,
    ),
    ("wrong X-Admin-Token", Case(ADMIN_TOKEN, "203.0.113.5", x_admin_token="guess"), Forbidden),
    ("wrong X-Admin-Token, loopback", Case(ADMIN_TOKEN, "127.0.0.1", x_admin_token="guess"), Forbidden),
    ("empty X-Admin-Token", Case(ADMIN_TOKEN, "127.0.0.1", x_admin_token=""), Forbidden),
    ("wrong Bearer token", Case(ADMIN_TOKEN, "203.0.113.5", authorization="Bearer guess"), Forbidden),
    (
        "token prefix only",
        Case(ADMIN_TOKEN, "203.0.113.5", authorization=f"Bearer {ADMIN_TOKEN[:-1]}"),
        Forbidden,
    ),
    ("loopback is not enough with a token", Case(ADMIN_TOKEN, "127.0.0.1"), NOBODY),
    ("::1 is not enough with a token", Case(ADMIN_TOKEN, "::1"), NOBODY),
    ("member key as X-API-Key", Case(ADMIN_TOKEN, "203.0.113.5", x_api_key=ALICE_KEY), ALICE),
    ("member key as Bearer", Case(ADMIN_TOKEN, "203.0.113.5", authorization=f"Bearer {ALICE_KEY}"), ALICE),
    ("unknown key", Case(ADMIN_TOKEN, "203.0.113.5", x_api_key=UNKNOWN_KEY), InvalidCredentials),
    (
        "unknown key as Bearer",
        Case(ADMIN_TOKEN, "203.0.113.5", authorization=f"Bearer {UNKNOWN_KEY}"),
        InvalidCredentials,
    ),
    # No admin token: a direct loopback peer is an admin, a relayed one is not.
    ("127.0.0.1", Case(None, "127.0.0.1"), ADMIN),
    ("127.0.0.5", Case(None, "127.0.0.5"), ADMIN),
    ("::1", Case(None, "::1"), ADMIN),
    ("127.0.0.1 relayed", Case(None, "127.0.0.1", relayed=True), NOBODY),
    ("127.0.0.5 relayed", Case(None, "127.0.0.5", relayed=True), NOBODY),
    ("::1 relayed", Case(None, "::1", relayed=True), NOBODY),
    ("non-loopback peer", Case(None, "203.0.113.5"), NOBODY),
    ("private peer", Case(None, "10.0.0.1"), NOBODY),
    ("no peer at all", Case(None, "unknown"), NOBODY),
    ("member key from loopback", Case(None, "127.0.0.1", x_api_key=ALICE_KEY), ALICE),
    ("member key from anywhere", Case(None, "203.0.113.5", authorization=f"Bearer {ALICE_KEY}"), ALICE),
    ("unknown key from loopback", Case(None, "127.0.0.1", x_api_key=UNKNOWN_KEY), InvalidCredentials),
    ("a token nobody configured", Case(None, "127.0.0.1", x_admin_token="anything"), Forbidden),
    ("a Bearer that is no key", Case(None, "127.0.0.1", authorization="Bearer anything"), InvalidCredentials),
    ("another scheme", Case(None, "127.0.0.1", authorization="Basic dXNlcjpwYXNz"), InvalidCredentials),
]


@pytest.fixture
async def alice_key(key_service: KeyService) -> str:
    return (await key_service.create("alice", "laptop")).secret


@pytest.mark.parametrize(("case", "expected"), [(c, e) for _, c, e in CASES], ids=[n for n, _, _ in CASES])
async def test_who_is_asking(
    case: Case, expected: Principal | type[Exception], authenticator: Authenticator, alice_key: str
) -> None:
    policy = AccessPolicy(authenticator, case.admin_token)

    def real(header: str | None) -> str | None:
        return header.replace(ALICE_KEY, alice_key) if header else header

    async def ask() -> Principal:
        return await policy.principal(
            x_api_key=real(case.x_api_key),
            authorization=real(case.authorization),
            x_admin_token=case.x_admin_token,
            peer=case.peer,
            relayed=case.relayed,
        )

    if isinstance(expected, Principal):
        assert await ask() == expected
    else:
        with pytest.raises(expected):
            await ask()


async def test_a_revoked_key_is_no_member(
    authenticator: Authenticator, key_service: KeyService, key_store: InMemoryKeyStore
) -> None:
    issued = await key_service.create("alice", None)
    policy = AccessPolicy(authenticator, None)
    assert (
        await policy.principal(
            x_api_key=issued.secret, authorization=None, x_admin_token=None, peer="203.0.113.5", relayed=False
        )
        == ALICE
    )
    await key_service.revoke(issued.key.id, "alice")
    with pytest.raises(InvalidCredentials):
        await policy.principal(
            x_api_key=issued.secret, authorization=None, x_admin_token=None, peer="127.0.0.1", relayed=False
        )


SCOPES: list[tuple[str, Principal, str | None, bool, str | type[Exception] | None]] = [
    ("admin, everyone", ADMIN, None, False, None),
    ("admin, one user", ADMIN, "bob", False, "bob"),
    ("admin must name the user", ADMIN, None, True, InvalidRequest),
    ("admin, bad user id", ADMIN, "bad id", False, InvalidRequest),
    ("member, implicit self", ALICE, None, True, "alice"),
    ("member, explicit self", ALICE, "alice", True, "alice"),
    ("member, listing self", ALICE, None, False, "alice"),
    ("member, another user", ALICE, "bob", True, Forbidden),
    ("member, another user's listing", ALICE, "bob", False, Forbidden),
    ("nobody", NOBODY, None, False, Forbidden),
    ("nobody naming a user", NOBODY, "alice", True, Forbidden),
]


@pytest.mark.parametrize(
    ("principal", "user_id", "required", "expected"),
    [case[1:] for case in SCOPES],
    ids=[case[0] for case in SCOPES],
)
def test_who_may_act_on_whom(
    principal: Principal, user_id: str | None, required: bool, expected: str | type[Exception] | None
) -> None:
    if isinstance(expected, type):
        with pytest.raises(expected):
            scope_user(principal, user_id, required_for_admin=required)
    else:
        assert scope_user(principal, user_id, required_for_admin=required) == expected


def test_nobody_is_told_how_to_configure_admin_access() -> None:
    with pytest.raises(Forbidden) as raised:
        scope_user(NOBODY, None, required_for_admin=False)
    assert raised.value.detail == ADMIN_HELP
    assert "OLLAMA_GATE_ADMIN_TOKEN" in ADMIN_HELP
    assert "X-Admin-Token" in ADMIN_HELP


@settings(deadline=None, max_examples=500)
@given(address=st.ip_addresses())
def test_a_direct_peer_is_a_local_admin_iff_it_is_loopback(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    # An IPv4-mapped address is its IPv4 address: a dual-stack socket shows 127.0.0.1 as ::ffff:127.0.0.1.
    unmapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    assert is_local_admin(str(address), relayed=False) == (unmapped or address).is_loopback
    assert is_local_admin(str(address), relayed=True) is False


@settings(deadline=None, max_examples=300)
@given(peer=st.one_of(st.text(), st.ip_addresses().map(str)), relayed=st.booleans())
def test_any_peer_text_is_judged_without_error(peer: str, relayed: bool) -> None:
    verdict = is_local_admin(peer, relayed)
    assert verdict is (not relayed and is_loopback(peer))
    if verdict:
        assert ipaddress.ip_address(peer.strip("[]")).is_loopback


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.255.254", True),
        ("::1", True),
        ("[::1]", True),
        ("128.0.0.1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("localhost", False),
        ("", False),
        ("unknown", False),
    ],
)
def test_is_loopback(peer: str, loopback: bool) -> None:
    assert is_loopback(peer) is loopback
