"""The console's session cookie, its form token and its origin check (domain.console_session), and the
sign-in service that issues sessions (services.console)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollama_gate.adapters.memory_stores import InMemoryKeyStore
from ollama_gate.domain.console_session import (
    ConsoleSession,
    csrf_matches,
    csrf_token,
    read_session,
    same_origin_request,
    sign_session,
)
from ollama_gate.domain.errors import InvalidRequest, Unauthorized
from ollama_gate.domain.sign_in_attempts import DEFAULT_FAILURES, DEFAULT_WINDOW_SECONDS, TooManySignIns
from ollama_gate.services.authenticator import Authenticator
from ollama_gate.services.console import ConsoleSessions
from ollama_gate.services.keys import KeyService
from tests.unit.fakes import FakeClock

SECRET = b"s" * 32
OTHER = b"o" * 32
NOW = 1_800_000_000.0
HOUR = 3600.0

members = st.builds(
    ConsoleSession.for_member,
    st.from_regex(r"[a-z][a-z0-9_.@-]{0,20}", fullmatch=True),
    st.integers(1, 2**63 - 1),
    st.floats(0, NOW),
    st.floats(1, 10 * HOUR),
)
admins = st.builds(ConsoleSession.for_admin, st.floats(0, NOW), st.floats(1, 10 * HOUR))


@given(st.one_of(members, admins))
def test_a_signed_session_reads_back_as_itself_until_it_expires(session: ConsoleSession) -> None:
    cookie = sign_session(session, SECRET)
    assert read_session(cookie, SECRET, session.expires - 0.5) == session
    assert read_session(cookie, SECRET, session.expires) is None
    assert read_session(cookie, OTHER, session.expires - 0.5) is None


@given(st.one_of(members, admins), st.data())
def test_any_change_to_a_cookie_is_refused(session: ConsoleSession, data: st.DataObject) -> None:
    cookie = sign_session(session, SECRET)
    position = data.draw(st.integers(0, len(cookie) - 1))
    replacement = data.draw(st.sampled_from("ABCabc019-_.="))
    tampered = cookie[:position] + replacement + cookie[position + 1 :]
    if tampered != cookie:
        found = read_session(tampered, SECRET, session.expires - 0.5)
        # Base64 padding bits may change without changing the bytes; then the session is the same.
        assert found is None or found == session


@given(st.text(max_size=300))
def test_reading_never_crashes_on_arbitrary_text(text: str) -> None:
    assert read_session(text, SECRET, NOW) is None


def test_a_member_cookie_cannot_be_turned_into_an_admin_one() -> None:
    member = ConsoleSession.for_member("alice", 7, NOW, HOUR)
    cookie = sign_session(member, SECRET)
    version, payload, signature = cookie.split(".")
    fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    fields[0] = True
    forged = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()
    assert read_session(f"{version}.{forged}.{signature}", SECRET, NOW) is None


def test_the_form_token_belongs_to_one_session() -> None:
    one, two = ConsoleSession.for_admin(NOW, HOUR), ConsoleSession.for_admin(NOW, HOUR)
    token = csrf_token(one, SECRET)
    assert csrf_matches(one, SECRET, token)
    assert not csrf_matches(two, SECRET, token)
    assert not csrf_matches(one, OTHER, token)
    assert not csrf_matches(one, SECRET, None)
    assert not csrf_matches(one, SECRET, "")
    assert not csrf_matches(one, SECRET, token[:-1])
    # Never the cookie's own signature: the two MACs are kept apart.
    assert token != sign_session(one, SECRET).rsplit(".", 1)[1]


@pytest.mark.parametrize(
    ("origin", "site", "referer", "host", "allowed"),
    [
        ("http://gate:8000", "same-origin", None, "gate:8000", True),
        ("https://gate.example", None, None, "gate.example", True),  # behind a TLS proxy
        (None, None, "http://gate:8000/console/keys", "gate:8000", True),
        (None, None, None, "gate:8000", True),  # not a browser: the form token still decides
        ("http://evil.example", "cross-site", None, "gate:8000", False),
        ("http://evil.example", None, None, "gate:8000", False),
        (None, "cross-site", None, "gate:8000", False),
        (None, "same-site", None, "gate:8000", False),
        ("null", None, None, "gate:8000", False),
        (None, None, "http://evil.example/x", "gate:8000", False),
        ("http://gate:8000", "same-origin", None, None, False),
        ("javascript:alert(1)", None, None, "gate:8000", False),
    ],
)
def test_the_origin_check(
    origin: str | None, site: str | None, referer: str | None, host: str | None, allowed: bool
) -> None:
    assert same_origin_request(origin, site, referer, host) is allowed


# -- the service -------------------------------------------------------------------------------------


def _sessions(
    admin_token: str | None = "admin-token-0123456789",
) -> tuple[ConsoleSessions, KeyService, FakeClock]:
    clock = FakeClock()
    store = InMemoryKeyStore()
    authenticator = Authenticator(store, clock)
    keys = KeyService(store, authenticator, clock)
    return ConsoleSessions(authenticator, store, clock, SECRET, admin_token, lifetime=HOUR), keys, clock


async def test_the_admin_token_signs_in_the_admin_and_a_wrong_one_does_not() -> None:
    sessions, _, _ = _sessions()
    session = await sessions.sign_in("admin-token-0123456789", "203.0.113.5", relayed=False)
    resumed = await sessions.resume(sessions.cookie_value(session), "203.0.113.5", relayed=False)
    assert resumed is not None and resumed[1].is_admin
    with pytest.raises(Unauthorized):
        await sessions.sign_in("admin-token-wrong", "127.0.0.1", relayed=False)


async def test_loopback_signs_in_without_a_token_only_when_none_is_set() -> None:
    open_box, _, _ = _sessions(admin_token=None)
    assert (await open_box.sign_in("", "127.0.0.1", relayed=False)).is_admin
    with pytest.raises(InvalidRequest):
        await open_box.sign_in("", "127.0.0.1", relayed=True)  # through a proxy: not local
    with pytest.raises(InvalidRequest):
        await open_box.sign_in("", "203.0.113.5", relayed=False)
    guarded, _, _ = _sessions()
    with pytest.raises(InvalidRequest):
        await guarded.sign_in("", "127.0.0.1", relayed=False)


async def test_a_member_session_ends_when_its_key_is_revoked() -> None:
    sessions, keys, _ = _sessions()
    issued = await keys.create("alice", "laptop")
    session = await sessions.sign_in(issued.secret, "203.0.113.5", relayed=False)
    cookie = sessions.cookie_value(session)
    resumed = await sessions.resume(cookie, "203.0.113.5", relayed=False)
    assert resumed is not None and resumed[1].user_id == "alice" and not resumed[1].is_admin
    await keys.revoke(issued.key.id, None)
    assert await sessions.resume(cookie, "203.0.113.5", relayed=False) is None
    with pytest.raises(Unauthorized):
        await sessions.sign_in(issued.secret, "203.0.113.5", relayed=False)


async def test_the_cookie_carries_no_credential() -> None:
    sessions, keys, _ = _sessions()
    issued = await keys.create("alice", "laptop")
    for credential in (issued.secret, "admin-token-0123456789"):
        cookie = sessions.cookie_value(await sessions.sign_in(credential, "::1", relayed=False))
        payload = cookie.split(".")[1]
        decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
        assert credential not in cookie and credential not in decoded


async def test_a_session_expires_after_its_lifetime() -> None:
    sessions, _, clock = _sessions()
    cookie = sessions.cookie_value(await sessions.sign_in("admin-token-0123456789", "::1", relayed=False))
    clock.advance(HOUR - 1)
    assert await sessions.resume(cookie, "::1", relayed=False) is not None
    clock.advance(2)
    assert await sessions.resume(cookie, "::1", relayed=False) is None


async def test_an_address_that_keeps_failing_is_refused_without_a_check_until_its_window_passes() -> None:
    sessions, _, clock = _sessions()
    for _ in range(DEFAULT_FAILURES):
        with pytest.raises(Unauthorized):
            await sessions.sign_in("admin-token-guess", "10.0.0.1", relayed=True, client="198.51.100.7")
    with pytest.raises(TooManySignIns) as refused:
        await sessions.sign_in("admin-token-0123456789", "10.0.0.1", relayed=True, client="198.51.100.7")
    assert 0 < refused.value.retry_after <= DEFAULT_WINDOW_SECONDS
    # Another client behind the same proxy is not locked out; the right token still works there.
    other = await sessions.sign_in("admin-token-0123456789", "10.0.0.1", relayed=True, client="198.51.100.8")
    assert other.is_admin
    clock.advance(DEFAULT_WINDOW_SECONDS)
    assert (await sessions.sign_in("admin-token-0123456789", "10.0.0.1", True, "198.51.100.7")).is_admin
