"""API keys: generation, hashing, display prefix, header parsing and the validation of names."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gate.domain.errors import InvalidRequest
from ollama_gate.domain.keys import (
    DEFAULT_KEY_NAME,
    KEY_PATTERN,
    KEY_PREFIX,
    InvalidCredentials,
    display_prefix,
    generate_secret,
    hash_secret,
    is_key_shaped,
    parse_key_headers,
    validate_key_name,
    validate_user_id,
)

KEY = "oa-" + "A" * 43
OTHER_KEY = "oa-" + "b" * 43
PARSE_ERRORS = {
    "invalid API key",
    "empty Bearer token",
    "unsupported Authorization scheme: use 'Bearer oa-...'",
}

# Anything a client can put in a header, and then some: unicode, whitespace, control characters.
header_values = st.one_of(
    st.none(),
    st.text(),
    st.text(alphabet=st.characters(codec="latin-1")),
    st.builds(lambda s: "Bearer " + s, st.text()),
    st.builds(lambda s: "oa-" + s, st.text(alphabet="AZaz09_-\t \x00é/+=", max_size=300)),
    st.builds(
        lambda pre, s, post: f"{pre}Bearer{s}oa-{'x' * 32}{post}",
        st.sampled_from(["", " ", "\t"]),
        st.sampled_from([" ", "  ", "\t", "\n", ""]),
        st.sampled_from(["", " ", "\r\n", "\x00", "é"]),
    ),
)


def test_generated_keys_have_the_documented_format() -> None:
    secrets = {generate_secret() for _ in range(200)}
    assert len(secrets) == 200
    for secret in secrets:
        assert re.fullmatch(r"oa-[A-Za-z0-9_-]{32,}", secret)
        assert is_key_shaped(secret)


KEYISH = st.one_of(
    st.text(alphabet="oa-_xZ09é\u0660\uff21 \n", max_size=300),
    st.builds(lambda body: KEY_PREFIX + body, st.text(alphabet="aZ09-_é\u0660.", min_size=28, max_size=260)),
)


@settings(max_examples=500)
@given(KEYISH)
def test_a_value_is_key_shaped_exactly_when_it_matches_the_documented_pattern(value: str) -> None:
    assert is_key_shaped(value) == (re.fullmatch(KEY_PATTERN, value) is not None)


def test_key_shapes_at_the_edges() -> None:
    assert is_key_shaped(KEY_PREFIX + "a" * 32) and is_key_shaped(KEY_PREFIX + "-_" * 16)
    assert not is_key_shaped(KEY_PREFIX + "a" * 31) and is_key_shaped(KEY_PREFIX + "a" * 253)
    assert not is_key_shaped(KEY_PREFIX + "a" * 254) and not is_key_shaped("ob-" + "a" * 40)
    assert not is_key_shaped(KEY_PREFIX + "a" * 39 + "\u0660") and not is_key_shaped(
        KEY_PREFIX + "a" * 39 + "."
    )


def test_the_hash_is_sha256_of_the_key_and_reveals_nothing_of_it() -> None:
    secret = generate_secret()
    key_hash = hash_secret(secret)
    assert key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in key_hash and secret[3:] not in key_hash
    assert hash_secret(secret) == key_hash
    assert hash_secret(generate_secret()) != key_hash


def test_the_display_prefix_is_short_and_starts_like_the_key() -> None:
    secret = generate_secret()
    prefix = display_prefix(secret)
    assert prefix == secret[:9]
    assert prefix.startswith("oa-")
    assert len(prefix) < 16


@pytest.mark.parametrize(
    ("x_api_key", "authorization", "expected"),
    [
        (None, None, None),
        (KEY, None, KEY),
        (f"  {KEY}  ", None, KEY),
        (None, f"Bearer {KEY}", KEY),
        (None, f"bearer {KEY}", KEY),
        (None, f"BEARER   {KEY} ", KEY),
        # X-API-Key wins when both are sent, even over a different Bearer key.
        (KEY, f"Bearer {OTHER_KEY}", KEY),
        (KEY, "Basic dXNlcjpwYXNz", KEY),
    ],
)
def test_parse_key_headers_finds_the_key(
    x_api_key: str | None, authorization: str | None, expected: str
) -> None:
    assert parse_key_headers(x_api_key, authorization) == expected


@pytest.mark.parametrize(
    ("x_api_key", "authorization", "reason"),
    [
        ("", None, "invalid API key"),
        ("   ", None, "invalid API key"),
        ("oa-short", None, "invalid API key"),
        ("sk-" + "A" * 43, None, "invalid API key"),
        (KEY + "!", None, "invalid API key"),
        ("oa-" + "A" * 300, None, "invalid API key"),
        (None, "Bearer", "empty Bearer token"),
        (None, "Bearer ", "empty Bearer token"),
        (None, "Bearer    ", "empty Bearer token"),
        (None, "", "unsupported Authorization scheme"),
        (None, "Basic dXNlcjpwYXNz", "unsupported Authorization scheme"),
        (None, KEY, "unsupported Authorization scheme"),
        (None, "Token " + KEY, "unsupported Authorization scheme"),
        (None, "Bearer not-a-key", "invalid API key"),
        (None, f"Bearer {KEY} extra", "invalid API key"),
        # A bad X-API-Key is not rescued by a good Bearer key: a wrong credential is never ignored.
        ("oa-short", f"Bearer {KEY}", "invalid API key"),
    ],
)
def test_a_present_but_wrong_header_is_invalid_credentials(
    x_api_key: str | None, authorization: str | None, reason: str
) -> None:
    with pytest.raises(InvalidCredentials, match=reason) as raised:
        parse_key_headers(x_api_key, authorization)
    assert raised.value.status == 401


@settings(deadline=None, max_examples=500)
@given(x_api_key=header_values, authorization=header_values)
def test_parsing_arbitrary_headers_raises_nothing_but_invalid_credentials(
    x_api_key: str | None, authorization: str | None
) -> None:
    try:
        key = parse_key_headers(x_api_key, authorization)
    except InvalidCredentials as error:
        # One of a few fixed messages: what the client sent (maybe someone's key) is never echoed.
        assert error.detail in PARSE_ERRORS
        return
    if x_api_key is None and authorization is None:
        assert key is None
    else:
        assert key is not None and is_key_shaped(key)
        assert key in (x_api_key if x_api_key is not None else authorization or "")


@settings(deadline=None)
@given(secret=st.builds(generate_secret))
def test_every_generated_key_parses_from_both_header_styles(secret: str) -> None:
    assert parse_key_headers(secret, None) == secret
    assert parse_key_headers(None, f"Bearer {secret}") == secret


@pytest.mark.parametrize("user_id", ["abc", "a", "A.b_c-d@example.com", "0" * 128, "user_42"])
def test_valid_user_ids(user_id: str) -> None:
    assert validate_user_id(user_id) == user_id


@pytest.mark.parametrize(
    "user_id", [None, "", "0" * 129, "has space", "semi;colon", "slash/", "é", "tab\t", "new\nline", "abc\n"]
)
def test_invalid_user_ids_are_a_400(user_id: str | None) -> None:
    with pytest.raises(InvalidRequest, match="user_id") as raised:
        validate_user_id(user_id)
    assert raised.value.status == 400


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (None, DEFAULT_KEY_NAME),
        ("MyKey", "MyKey"),
        ("  padded  ", "padded"),
        ("x" * 100, "x" * 100),
        ("clé de test", "clé de test"),
    ],
)
def test_valid_key_names(name: str | None, expected: str) -> None:
    assert validate_key_name(name) == expected


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "bell\x07", "new\nline", "nul\x00"])
def test_invalid_key_names_are_a_400(name: str) -> None:
    with pytest.raises(InvalidRequest, match="name"):
        validate_key_name(name)
