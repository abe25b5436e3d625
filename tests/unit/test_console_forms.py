"""Plan forms (domain.console_forms) and the charts' series (domain.usage_series)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollama_gate.domain.console_forms import plan_fields_from_form, plan_form_values
from ollama_gate.domain.errors import InvalidRequest
from ollama_gate.domain.plans import FIELD_NAMES, Window, plan_from_fields
from ollama_gate.domain.usage_series import BucketCount, SeriesRange, SeriesWindow, parse_range, shape_series


def test_an_empty_form_is_a_plan_without_limits() -> None:
    fields = plan_fields_from_form({"csrf_token": "x"})
    assert fields == dict.fromkeys(FIELD_NAMES)
    assert plan_from_fields("free", fields).requests is None


def test_a_full_form_reads_as_the_api_would_send_it() -> None:
    form = {
        "requests": "30/60",
        "tokens": "20000/3600",
        "daily_tokens": "100000",
        "concurrency": "2",
        "models": "llama3.2:*, smollm\nqwen",
        "max_context": "4096",
        "max_output": "512",
        "max_keep_alive": "5m",
        "priority": "-3",
        "weight": "1.5",
        "queue_timeout": "30",
    }
    plan = plan_from_fields("team", plan_fields_from_form(form))
    assert plan.requests == Window(30, 60) and plan.models == ("llama3.2:*", "smollm", "qwen")
    assert (plan.max_keep_alive, plan.priority, plan.weight, plan.queue_timeout) == (300, -3, 1.5, 30)


@pytest.mark.parametrize(
    ("field", "text", "message"),
    [("concurrency", "two", "concurrency"), ("weight", "heavy", "weight"), ("requests", "30", "requests")],
)
def test_a_bad_field_is_named_in_the_message(field: str, text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        plan_from_fields("team", plan_fields_from_form({field: text}))


counts = st.integers(1, 10**9)
plans = st.fixed_dictionaries(
    {},
    optional={
        "requests": st.builds(lambda n, w: f"{n}/{w}", counts, st.integers(1, 86_400)),
        "daily_tokens": counts,
        "concurrency": counts,
        "models": st.lists(st.from_regex(r"[a-z][a-z0-9.:*]{0,20}", fullmatch=True), min_size=1, max_size=4),
        "max_keep_alive": st.floats(0, 86_400, allow_nan=False),
        "priority": st.integers(-1000, 1000),
        "weight": st.floats(0.001, 1000, allow_nan=False),
        "queue_timeout": st.floats(0, 3600, allow_nan=False),
    },
)


@given(plans)
def test_a_plan_shown_in_its_form_and_saved_again_is_unchanged(fields: dict[str, object]) -> None:
    plan = plan_from_fields("p", fields)
    again = plan_from_fields("p", plan_fields_from_form(plan_form_values(plan.fields())))
    assert again == plan


@given(
    st.floats(1_600_000_000, 1_900_000_000, allow_nan=False),
    st.sampled_from(list(SeriesRange)),
    st.lists(st.tuples(st.integers(-400, 10), st.integers(0, 1000), st.integers(0, 10**6)), max_size=50),
)
def test_the_series_covers_the_range_and_keeps_every_row_inside_it(
    now: float, span: SeriesRange, raw: list[tuple[int, int, int]]
) -> None:
    window = SeriesWindow.ending_at(now, span)
    last = math.floor(now / window.bucket_seconds)
    buckets = [BucketCount(last + offset, requests, tokens) for offset, requests, tokens in raw]
    series = shape_series(buckets, window)
    assert len(series.times) == span.seconds // span.bucket_seconds
    assert series.times[0] <= now - span.seconds + span.bucket_seconds and series.times[-1] <= now
    assert all(b - a == window.bucket_seconds for a, b in zip(series.times, series.times[1:], strict=False))
    inside = [b for b in buckets if window.first_bucket <= b.bucket <= last]
    assert series.total_requests == sum(b.requests for b in inside)
    assert series.total_tokens == sum(b.tokens for b in inside)


def test_a_range_is_hour_or_day() -> None:
    assert parse_range(None) is SeriesRange.HOUR and parse_range("day") is SeriesRange.DAY
    with pytest.raises(InvalidRequest):
        parse_range("week")
