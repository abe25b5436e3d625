"""API keys: format, generation, hashing and the parsing of the headers that carry them."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime

from ollama_gate.domain.errors import InvalidRequest, NotFound, Unauthorized
from ollama_gate.domain.identity import RESERVED_USERS
from ollama_gate.domain.immutable import immutable

KEY_PREFIX = "oa-"
# token_urlsafe(32) gives 43 characters (256 bits); the format accepts any 32+ URL-safe characters.
_KEY_RANDOM_BYTES = 32
_DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 6
# The format (the tests hold `is_key_shaped` to it): checked with str methods on the request path, where
# the regular expression cost about 10k instructions per request (callgrind, bench section 12).
KEY_PATTERN = r"oa-[A-Za-z0-9_-]{32,253}"
_KEY_LENGTHS = range(len(KEY_PREFIX) + 32, len(KEY_PREFIX) + 254)
USER_ID_PATTERN = r"[A-Za-z0-9_.@-]{1,128}"
_USER_ID_PATTERN = re.compile(USER_ID_PATTERN)
KEY_NAME_MAX_LENGTH = 100
DEFAULT_KEY_NAME = "default"


class InvalidCredentials(Unauthorized):
    """A key header is present but cannot be a valid key, or names no active key."""


@immutable
class ApiKey:
    """A stored key: everything but the secret, which is only ever kept as a hash."""

    id: int
    user_id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    plan: str | None = None  # a plan of the key's own: its requests count per key, not per user

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@immutable
class IssuedKey:
    """A key at the one moment its secret is known: right after creation."""

    key: ApiKey
    secret: str


def generate_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_KEY_RANDOM_BYTES)


def hash_secret(secret: str) -> str:
    # A key carries 256 random bits, so a fast hash is enough: nothing to brute-force. Keys are looked up
    # by this digest (a dict in memory, a unique index in SQL), so whatever timing those comparisons leak
    # is about the SHA-256 of a secret, never the secret itself.
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[:_DISPLAY_PREFIX_LENGTH]


def is_key_shaped(value: str) -> bool:
    """Whether `value` has the format of a key (`KEY_PATTERN`)."""
    if len(value) not in _KEY_LENGTHS or not value.startswith(KEY_PREFIX) or not value.isascii():
        return False
    letters_and_digits = value[len(KEY_PREFIX) :].replace("-", "").replace("_", "")
    return not letters_and_digits or letters_and_digits.isalnum()


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None for another scheme."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def parse_key_headers(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key a request presents, or None when it presents none.

    `X-API-Key` wins over `Authorization` when both are sent. A header that is present but does not hold
    a well-formed key raises InvalidCredentials: a wrong credential is never a silent downgrade.
    """
    if x_api_key is not None:
        candidate = x_api_key.strip()
        if not is_key_shaped(candidate):
            raise InvalidCredentials("invalid API key")
        return candidate
    if authorization is None:
        return None
    token = bearer_token(authorization)
    if token is None:
        raise InvalidCredentials("unsupported Authorization scheme: use 'Bearer oa-...'")
    if not token:
        raise InvalidCredentials("empty Bearer token")
    if not is_key_shaped(token):
        raise InvalidCredentials("invalid API key")
    return token


# Ids are 64-bit in both databases: a larger number from a URL names no key (and must not reach SQL).
MAX_KEY_ID = 2**63 - 1


def validate_user_id(user_id: str | None) -> str:
    """A well-formed user id (to read by); see `validate_member_id` for one that may hold keys."""
    if user_id is None or _USER_ID_PATTERN.fullmatch(user_id) is None:
        raise InvalidRequest("user_id must be 1-128 characters: letters, digits, '_', '.', '@', '-'")
    return user_id


def validate_member_id(user_id: str | None) -> str:
    """A user id that may become a member: well-formed and not one of the reserved names."""
    user_id = validate_user_id(user_id)
    if user_id.lower() in RESERVED_USERS:
        raise InvalidRequest(f"user_id {user_id!r} is reserved: choose another name")
    return user_id


def validate_key_id(key_id: int) -> int:
    """A key id that can exist; anything else is NotFound before it reaches a store."""
    if not 1 <= key_id <= MAX_KEY_ID:
        raise NotFound(f"key {key_id} not found")
    return key_id


def validate_key_name(name: str | None) -> str:
    if name is None:
        return DEFAULT_KEY_NAME
    name = name.strip()
    if not name or len(name) > KEY_NAME_MAX_LENGTH or not name.isprintable():
        raise InvalidRequest(f"name must be 1-{KEY_NAME_MAX_LENGTH} printable characters")
    return name
