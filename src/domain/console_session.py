"""The console's session cookie and its cross-site request checks: pure, the secret and the time given.

A cookie says who is signed in (the admin, or a member's user id and the key it signed in with) and until
when, signed with HMAC-SHA256. It never carries the admin token or a key's secret: a stolen cookie is
worth a session, never a credential, and a member's session ends as soon as its key is revoked (the
service checks the key on each request).

The form token that protects every state-changing form is derived from the session (an HMAC of its
nonce under a key of its own), so nothing is stored server-side and each session has its own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
from urllib.parse import urlsplit

from ollama_gate.domain.errors import InvalidRequest
from ollama_gate.domain.immutable import immutable
from ollama_gate.domain.keys import MAX_KEY_ID, validate_member_id

COOKIE_NAME = "ollama_gate_console"
CSRF_FIELD = "csrf_token"
DEFAULT_SESSION_SECONDS = 8 * 3600.0
MIN_SECRET_BYTES = 32
_VERSION = b"v1"
_MAX_COOKIE_CHARS = 1024


@immutable
class ConsoleSession:
    """Who a valid cookie says is signed in: the admin (no user), or a member with the key it used."""

    is_admin: bool
    user_id: str | None
    key_id: int | None
    expires: float
    nonce: str

    @classmethod
    def for_admin(cls, now: float, lifetime: float) -> ConsoleSession:
        return cls(True, None, None, now + lifetime, secrets.token_urlsafe(16))

    @classmethod
    def for_member(cls, user_id: str, key_id: int, now: float, lifetime: float) -> ConsoleSession:
        return cls(False, user_id, key_id, now + lifetime, secrets.token_urlsafe(16))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, purpose: bytes, data: bytes) -> bytes:
    # One secret, two uses kept apart: a cookie signature is never a valid form token, nor the reverse.
    return hmac.new(secret, purpose + b"\x00" + data, hashlib.sha256).digest()


def sign_session(session: ConsoleSession, secret: bytes) -> str:
    """The cookie value: `v1.<payload>.<signature>`, both base64url."""
    fields = [session.is_admin, session.user_id, session.key_id, session.expires, session.nonce]
    payload = json.dumps(fields, separators=(",", ":")).encode()
    body = _VERSION + b"." + _b64(payload).encode("ascii")
    return body.decode("ascii") + "." + _b64(_mac(secret, b"session", body))


def read_session(value: str | None, secret: bytes, now: float) -> ConsoleSession | None:
    """The session a cookie value holds, or None: absent, malformed, tampered with, signed with another
    secret, or expired. Never raises, whatever the value."""
    if not value or len(value) > _MAX_COOKIE_CHARS or not value.isascii():
        return None
    body, dot, signature = value.rpartition(".")
    if not dot or not body.startswith("v1."):
        return None
    try:
        presented = _unb64(signature)
        expected = _mac(secret, b"session", body.encode("ascii"))
        if not hmac.compare_digest(presented, expected):
            return None
        fields = json.loads(_unb64(body[3:]))
    except (binascii.Error, ValueError, RecursionError):
        return None
    return _session_of(fields, now)


def _session_of(fields: object, now: float) -> ConsoleSession | None:
    """The session a signed payload describes, if it is well-formed and still valid."""
    if not isinstance(fields, list) or len(fields) != 5:
        return None
    admin, user, key_id, expires, nonce = fields
    if not isinstance(admin, bool) or not isinstance(nonce, str) or isinstance(expires, bool):
        return None
    if not isinstance(expires, int | float) or not math.isfinite(expires) or expires <= now:
        return None
    if admin:
        if user is not None or key_id is not None:
            return None
    else:
        if not isinstance(user, str) or isinstance(key_id, bool) or not isinstance(key_id, int):
            return None
        if not 1 <= key_id <= MAX_KEY_ID:
            return None
        try:
            validate_member_id(user)
        except InvalidRequest:
            return None
    return ConsoleSession(admin, user, key_id, float(expires), nonce)


def csrf_token(session: ConsoleSession, secret: bytes) -> str:
    """The form token of `session`: the same for the whole session, different for every other one."""
    return _b64(_mac(secret, b"csrf", session.nonce.encode()))


def csrf_matches(session: ConsoleSession, secret: bytes, presented: str | None) -> bool:
    """Whether a form's token is `session`'s, compared in constant time."""
    if not presented or len(presented) > 128 or not presented.isascii():
        return False
    return hmac.compare_digest(presented.encode("ascii"), csrf_token(session, secret).encode("ascii"))


def same_origin_request(
    origin: str | None, sec_fetch_site: str | None, referer: str | None, host: str | None
) -> bool:
    """Whether a state-changing request comes from the console's own pages.

    A browser says so with `Sec-Fetch-Site` (`same-origin`; `none` is the user typing or a bookmark),
    and with `Origin` on every POST. A request that says it is cross-site (or same-site from another
    origin) is refused; so is an `Origin` (or, without one, a `Referer`) whose host is not this one. The
    scheme is not compared: behind a proxy that ends TLS the gateway sees http for an https page. A
    client that sends none of them (curl, a script) is no browser a cross-site page can drive, and still
    needs the session's form token.
    """
    if sec_fetch_site is not None and sec_fetch_site.strip().lower() not in ("same-origin", "none"):
        return False
    seen = origin if origin is not None else referer
    if seen is None:
        return True
    seen = seen.strip()
    if seen == "null":
        return False
    parts = urlsplit(seen)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    return host is not None and parts.netloc.lower() == host.strip().lower()


def generated_secret() -> bytes:
    return secrets.token_bytes(MIN_SECRET_BYTES)
