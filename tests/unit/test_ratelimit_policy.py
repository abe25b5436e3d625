"""The sliding-window policy: exact, over arbitrary arrival times and parameters."""

from __future__ import annotations

import math
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gate.domain.ratelimit import Decision, RateLimit, decide

limits = st.integers(min_value=1, max_value=50)
windows = st.floats(min_value=0.5, max_value=120.0, allow_nan=False, allow_infinity=False)
arrival_lists = st.lists(
    st.floats(min_value=0.0, max_value=1000.0, allow_nan=False, allow_infinity=False), max_size=300
).map(sorted)

# Dyadic rationals (multiples of 1/64 below 2**20) add and subtract exactly in binary floating point,
# so "exactly when the oldest request leaves the window" can be checked to the last bit.
exact_times = st.integers(min_value=0, max_value=64 * 2000).map(lambda n: n / 64)
exact_windows = st.integers(min_value=32, max_value=64 * 120).map(lambda n: n / 64)


def run(rate: RateLimit, arrivals: list[float]) -> list[tuple[float, Decision]]:
    log: deque[float] = deque()
    return [(now, decide(log, rate, now)) for now in arrivals]


def admitted_within(admitted: list[float], end: float, window: float) -> int:
    """Admissions in (end - window, end]."""
    start = end - window
    return sum(1 for t in admitted if start < t <= end)


@settings(deadline=None)
@given(limit=limits, window=windows, arrivals=arrival_lists)
def test_never_more_than_the_limit_in_any_window(limit: int, window: float, arrivals: list[float]) -> None:
    rate = RateLimit("anonymous", limit, window)
    admitted = [now for now, decision in run(rate, arrivals) if decision.admitted]
    for t in admitted:
        assert admitted_within(admitted, t, window) <= limit


@settings(deadline=None)
@given(limit=limits, window=windows, arrivals=arrival_lists)
def test_rejected_only_when_the_window_is_full(limit: int, window: float, arrivals: list[float]) -> None:
    rate = RateLimit("anonymous", limit, window)
    admitted: list[float] = []
    for now, decision in run(rate, arrivals):
        if decision.admitted:
            admitted.append(now)
        else:
            assert admitted_within(admitted, now, window) == limit


@settings(deadline=None)
@given(limit=limits, window=windows, arrivals=arrival_lists)
def test_remaining_counts_the_free_slots(limit: int, window: float, arrivals: list[float]) -> None:
    rate = RateLimit("anonymous", limit, window)
    admitted: list[float] = []
    for now, decision in run(rate, arrivals):
        if decision.admitted:
            admitted.append(now)
        assert decision.remaining == limit - admitted_within(admitted, now, window)
        assert 0 <= decision.remaining < limit or not decision.admitted


@settings(deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=50),
    window=exact_windows,
    arrivals=st.lists(exact_times, max_size=300).map(sorted),
)
def test_retry_after_is_exactly_when_the_oldest_admission_leaves(
    limit: int, window: float, arrivals: list[float]
) -> None:
    rate = RateLimit("anonymous", limit, window)
    log: deque[float] = deque()
    for now in arrivals:
        before = deque(log)
        decision = decide(log, rate, now)
        if decision.admitted:
            continue
        admitted = list(before)
        oldest = min(t for t in admitted if t > now - window)
        assert decision.retry_after == oldest + window - now
        assert decision.retry_after > 0
        # At that moment a request fits; a moment earlier it still does not.
        assert decide(deque(before), rate, now + decision.retry_after).admitted
        assert not decide(deque(before), rate, math.nextafter(now + decision.retry_after, 0)).admitted


@settings(deadline=None)
@given(limit=limits, window=windows, arrivals=arrival_lists)
def test_a_rejection_consumes_nothing(limit: int, window: float, arrivals: list[float]) -> None:
    rate = RateLimit("anonymous", limit, window)
    log: deque[float] = deque()
    for now in arrivals:
        before = list(log)
        decision = decide(log, rate, now)
        if not decision.admitted:
            assert list(log) == [t for t in before if t > now - window]


def test_the_limit_then_a_rejection_then_a_slot_frees() -> None:
    rate = RateLimit("anonymous", 10, 60)
    log: deque[float] = deque()
    decisions = [decide(log, rate, 100.0 + i) for i in range(10)]
    assert all(d.admitted for d in decisions)
    assert [d.remaining for d in decisions] == list(range(9, -1, -1))
    rejected = decide(log, rate, 130.0)
    assert not rejected.admitted
    assert rejected.remaining == 0
    assert rejected.retry_after == 30.0  # the first admission (at 100) leaves the window at 160
    assert not decide(log, rate, 159.999).admitted
    assert decide(log, rate, 160.0).admitted


def test_an_empty_log_resets_at_once() -> None:
    decision = decide(deque(), RateLimit("member", 1, 60), 5.0)
    assert decision.admitted
    assert decision.remaining == 0
    assert decision.reset_after == 60.0


@pytest.mark.parametrize(
    ("text", "limit", "window"),
    [("10/60", 10, 60.0), (" 30 / 60 ", 30, 60.0), ("1/0.5", 1, 0.5), ("100/3600", 100, 3600.0)],
)
def test_parse_accepts_n_slash_w(text: str, limit: int, window: float) -> None:
    rate = RateLimit.parse("member", text)
    assert rate == RateLimit("member", limit, window)


@pytest.mark.parametrize(
    "text", ["", "10", "10/", "/60", "0/60", "10/0", "-1/60", "10/-60", "ten/60", "10/60s", "1.5/60", "10 60"]
)
def test_parse_rejects_everything_else(text: str) -> None:
    with pytest.raises(ValueError, match=r"N/W|positive"):
        RateLimit.parse("anonymous", text)


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (RateLimit("anonymous", 10, 60), "10 req / 60s"),
        (RateLimit("member", 30, 60.0), "30 req / 60s"),
        (RateLimit("member", 5, 0.5), "5 req / 0.5s"),
    ],
)
def test_describe_is_what_the_status_page_shows(rate: RateLimit, text: str) -> None:
    assert rate.describe() == text
