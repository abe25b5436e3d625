"""Nesting depth is judged exactly, before any decoder recurses into a body."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gate.domain.errors import InvalidRequest
from ollama_gate.domain.json_depth import MAX_JSON_DEPTH, check_nesting, nesting_depth_exceeds


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(item) for item in value.values()), default=0)
    return 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\x'), inner, max_size=3)
    ),
    max_leaves=40,
)


@settings(deadline=None, max_examples=500)
@given(value=json_values, limit=st.integers(min_value=0, max_value=8))
def test_the_verdict_is_the_real_depth_against_the_limit(value: Any, limit: int) -> None:
    """Brackets inside strings (escaped quotes included) never count; every real level does."""
    body = json.dumps(value).encode()
    assert nesting_depth_exceeds(body, limit) == (depth(value) > limit)


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH])
def test_the_stated_limit_itself_is_accepted(levels: int) -> None:
    body = b'{"options": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"
    check_nesting(body)


def test_a_thousand_levels_in_two_kilobytes_are_refused_with_400() -> None:
    body = b'{"message": "hi", "options": {"x": ' + b"[" * 1000 + b"]" * 1000 + b"}}"
    with pytest.raises(InvalidRequest) as raised:
        check_nesting(body)
    assert raised.value.status == 400
    assert "nested deeper than 64 levels" in raised.value.detail


def test_brackets_that_never_close_count_as_levels_too() -> None:
    """A decoder recurses into `[[[[...` before it finds that the body ended: as dangerous as closed ones."""
    assert nesting_depth_exceeds(b"[" * 1000, MAX_JSON_DEPTH)
    assert nesting_depth_exceeds(b'{"a": ' * 100, MAX_JSON_DEPTH)
    assert nesting_depth_exceeds(b"[" * 10 + b"]" * 10, 4)
    # A few unclosed brackets are merely malformed: the decoder answers that with its own 400.
    assert not nesting_depth_exceeds(b"[[[1", 4)
