"""A plan's ceilings on request bodies: never exceeded once applied, and no change means the same bytes."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gate.domain.ceilings import BodyKind, lower_to_ceilings
from ollama_gate.domain.plans import Plan, parse_duration
from ollama_gate.services.passthrough import ceilinged

numbers = st.one_of(
    st.integers(min_value=-3, max_value=10**7),
    st.floats(min_value=-3, max_value=1e7, allow_nan=False),
    st.text(max_size=5),
    st.none(),
    st.booleans(),
)
durations = st.one_of(
    st.integers(min_value=-5, max_value=10**6),
    st.sampled_from(["5m", "1h", "-1", "-1m", "0", "300ms", "1h30m", "2h45m10s", "forever", "", "10"]),
)
ceilings = st.builds(
    Plan,
    st.just("p"),
    max_context=st.none() | st.integers(min_value=1, max_value=200_000),
    max_output=st.none() | st.integers(min_value=1, max_value=10_000),
    max_keep_alive=st.none() | st.integers(min_value=0, max_value=7200).map(float),
)


def ollama_bodies() -> st.SearchStrategy[dict[str, Any]]:
    options = st.dictionaries(
        st.sampled_from(["num_ctx", "num_predict", "temperature", "seed"]), numbers, max_size=4
    )
    return st.fixed_dictionaries(
        {"model": st.just("smollm:latest"), "prompt": st.text(max_size=20)},
        optional={"options": options | st.none(), "keep_alive": durations, "stream": st.booleans()},
    )


def openai_bodies() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"model": st.just("smollm:latest"), "messages": st.just([{"role": "user", "content": "hi"}])},
        optional={"max_tokens": numbers, "max_completion_tokens": numbers, "temperature": numbers},
    )


def within(value: Any, ceiling: int | float) -> bool:
    """A value the ceiling allows: a number from 0 to the ceiling (what is no number is Ollama's to refuse)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    return 0 <= value <= ceiling


@settings(deadline=None, max_examples=500)
@given(body=ollama_bodies(), plan=ceilings)
def test_an_ollama_body_never_exceeds_a_ceiling_once_lowered(body: dict[str, Any], plan: Plan) -> None:
    sent = json.loads(ceilinged(json.dumps(body).encode(), BodyKind.OLLAMA_GENERATION, plan))
    options = sent.get("options") if isinstance(sent.get("options"), dict) else {}
    if plan.max_context is not None and "num_ctx" in options:
        assert within(options["num_ctx"], plan.max_context)
    if plan.max_output is not None and (isinstance(sent.get("options"), dict) or "options" not in body):
        # Also applied when the request sets none.
        assert "num_predict" in options and within(options["num_predict"], plan.max_output)
    if plan.max_keep_alive is not None and "keep_alive" in sent:
        seconds = parse_duration(sent["keep_alive"])
        assert seconds is None or 0 <= seconds <= plan.max_keep_alive  # forever is lowered too


@settings(deadline=None, max_examples=500)
@given(body=openai_bodies(), plan=ceilings)
def test_an_openai_body_never_exceeds_max_output_once_lowered(body: dict[str, Any], plan: Plan) -> None:
    sent = json.loads(ceilinged(json.dumps(body).encode(), BodyKind.OPENAI_GENERATION, plan))
    if plan.max_output is not None:
        spelled = [key for key in ("max_tokens", "max_completion_tokens") if sent.get(key) is not None]
        assert spelled  # also applied when the request sets none
        assert all(within(sent[key], plan.max_output) for key in spelled)


@settings(deadline=None, max_examples=500)
@given(body=ollama_bodies(), plan=ceilings, spacing=st.sampled_from([None, (",", ":"), (", ", ": ")]))
def test_a_body_with_nothing_to_lower_is_forwarded_byte_for_byte(
    body: dict[str, Any], plan: Plan, spacing: tuple[str, str] | None
) -> None:
    raw = json.dumps(body, separators=spacing).encode()
    decoded = json.loads(raw)
    if lower_to_ceilings(decoded, BodyKind.OLLAMA_GENERATION, plan):
        return  # something had to change: covered above
    assert ceilinged(raw, BodyKind.OLLAMA_GENERATION, plan) is raw


def test_a_plan_without_ceilings_never_decodes_a_body() -> None:
    raw = b"not even json"
    assert ceilinged(raw, BodyKind.OLLAMA_GENERATION, Plan("member")) is raw
    assert ceilinged(raw, BodyKind.OPENAI_EMBEDDING, Plan("p", max_output=5)) is raw


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"keep_alive": -1}, 300),
        ({"keep_alive": "-1m"}, 300),
        ({"keep_alive": "24h"}, 300),
        ({"keep_alive": 3600}, 300),
        ({"keep_alive": "2m"}, "2m"),
        ({"keep_alive": 0}, 0),
        ({"options": {"num_ctx": 1048576, "temperature": 0}}, {"num_ctx": 8192, "temperature": 0}),
        ({"options": {"num_ctx": 4096}}, {"num_ctx": 4096}),
    ],
)
def test_ceilings_lower_what_is_above_them(body: dict[str, Any], expected: Any) -> None:
    plan = Plan("p", max_context=8192, max_keep_alive=300.0)
    lower_to_ceilings(body, BodyKind.OLLAMA_EMBEDDING, plan)
    assert body.get("keep_alive", body.get("options")) == expected


def test_max_output_is_added_when_the_request_sets_none_and_lowers_a_negative_one() -> None:
    plan = Plan("p", max_output=256)
    unset: dict[str, Any] = {"prompt": "hi"}
    endless: dict[str, Any] = {"options": {"num_predict": -1}}
    assert lower_to_ceilings(unset, BodyKind.OLLAMA_GENERATION, plan)
    assert lower_to_ceilings(endless, BodyKind.OLLAMA_GENERATION, plan)
    assert unset["options"] == {"num_predict": 256} and endless["options"] == {"num_predict": 256}
    embedding: dict[str, Any] = {"input": "hi"}
    assert not lower_to_ceilings(embedding, BodyKind.OLLAMA_EMBEDDING, plan)  # embeddings generate nothing


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        (2.5, 2.5),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("0", 0.0),
        ("-1", -math.inf),
        ("-5m", -math.inf),
        (-1, -math.inf),
        ("10", None),
        ("forever", None),
        ("", None),
        (True, None),
        (None, None),
    ],
)
def test_durations_read_as_ollama_reads_them(value: Any, seconds: float | None) -> None:
    assert parse_duration(value) == seconds
