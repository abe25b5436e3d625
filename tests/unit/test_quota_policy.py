"""The arithmetic of a plan's limits (domain/quota.py): exact over arbitrary times, amounts and limits."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gate.domain.plans import Window
from ollama_gate.domain.quota import Admission, IdentityUsage, LimitKind, Limits

counts = st.integers(min_value=1, max_value=50)
# Dyadic rationals (multiples of 1/64 below 2**20) add and subtract exactly in binary floating point,
# so "exactly when room frees" can be checked to the last bit.
exact_times = st.integers(min_value=0, max_value=64 * 2000).map(lambda n: n / 64)
exact_windows = st.integers(min_value=32, max_value=64 * 120).map(lambda n: n / 64)
arrivals = st.lists(exact_times, max_size=200).map(sorted)


def within(times: list[float], end: float, seconds: float) -> list[float]:
    """The times in (end - seconds, end]."""
    return [t for t in times if end - seconds < t <= end]


# -- requests ------------------------------------------------------------------------------------------


def run_requests(limit: int, seconds: float, times: list[float]) -> list[tuple[float, Admission]]:
    usage, limits = IdentityUsage(), Limits("p", requests=Window(limit, seconds))
    return [(now, usage.admit(limits, now, f"m{i}", f"l{i}")) for i, now in enumerate(times)]


@settings(deadline=None)
@given(limit=counts, seconds=exact_windows, times=arrivals)
def test_requests_never_more_than_n_in_any_window_and_refused_only_when_full(
    limit: int, seconds: float, times: list[float]
) -> None:
    admitted: list[float] = []
    for now, admission in run_requests(limit, seconds, times):
        if admission.admitted:
            admitted.append(now)
            assert len(within(admitted, now, seconds)) <= limit
        else:
            assert len(within(admitted, now, seconds)) == limit
            assert admission.refused_by is LimitKind.REQUESTS
        [state] = admission.states
        assert state.remaining == limit - len(within(admitted, now, seconds))


@settings(deadline=None)
@given(limit=counts, seconds=exact_windows, times=arrivals)
def test_requests_retry_after_is_exactly_when_the_oldest_admission_leaves(
    limit: int, seconds: float, times: list[float]
) -> None:
    admitted: list[float] = []
    for now, admission in run_requests(limit, seconds, times):
        if admission.admitted:
            admitted.append(now)
            continue
        oldest = min(within(admitted, now, seconds))
        assert admission.retry_after == oldest + seconds - now > 0
        # At that moment a request fits; a moment before, it still does not.
        assert len(within(admitted, now + admission.retry_after, seconds)) < limit
        assert len(within(admitted, math.nextafter(now + admission.retry_after, 0), seconds)) == limit


# -- tokens ---------------------------------------------------------------------------------------------

# (time, tokens that request will use): each request ends at once with its tokens charged.
token_requests = st.lists(st.tuples(exact_times, st.integers(min_value=0, max_value=400)), max_size=120).map(
    sorted
)


@settings(deadline=None, max_examples=300)
@given(limit=st.integers(min_value=1, max_value=2000), seconds=exact_windows, requests=token_requests)
def test_tokens_never_admit_once_the_window_holds_n_and_never_refuse_below_n(
    limit: int, seconds: float, requests: list[tuple[float, int]]
) -> None:
    usage, limits = IdentityUsage(), Limits("p", tokens=Window(limit, seconds))
    charges: list[tuple[float, int]] = []
    for number, (now, used) in enumerate(requests):
        in_window = sum(amount for at, amount in charges if now - seconds < at <= now)
        admission = usage.admit(limits, now, f"m{number}", f"l{number}")
        assert admission.admitted == (in_window < limit)
        if admission.admitted:
            usage.finish(admission, used, now)
            if used:
                charges.append((now, used))
        else:
            # When room frees, the window's total has fallen below N, and not a moment before.
            later = now + admission.retry_after
            assert sum(a for at, a in charges if later - seconds < at <= later) < limit
            before = math.nextafter(later, 0)
            assert sum(a for at, a in charges if before - seconds < at <= before) >= limit


def test_a_charge_is_made_when_the_request_ends_so_the_last_one_may_overshoot() -> None:
    usage, limits = IdentityUsage(), Limits("p", tokens=Window(100, 60))
    first = usage.admit(limits, 0.0, "a", "la")
    second = usage.admit(limits, 1.0, "b", "lb")  # nothing charged yet: admitted
    usage.finish(first, 90, 2.0)
    usage.finish(second, 90, 3.0)
    refused = usage.admit(limits, 4.0, "c", "lc")
    assert not refused.admitted
    assert refused.state(LimitKind.TOKENS).remaining == 0  # type: ignore[union-attr]
    assert refused.retry_after == 58.0  # 180 -> 90 when the first charge (at 2 s) leaves


# -- all together ---------------------------------------------------------------------------------------

plans = st.builds(
    Limits,
    st.just("p"),
    requests=st.none() | st.builds(Window, counts, exact_windows),
    tokens=st.none() | st.builds(Window, st.integers(min_value=1, max_value=500), exact_windows),
    daily=st.none() | st.builds(Window, st.integers(min_value=1, max_value=500), st.just(86_400.0)),
    concurrency=st.none() | st.integers(min_value=1, max_value=5),
)
# Each step: a request arriving (with the tokens it will use), or the oldest in flight ending.
steps = st.lists(st.tuples(st.sampled_from(["arrive", "end", "refund"]), st.integers(0, 300)), max_size=80)


@settings(deadline=None, max_examples=300)
@given(limits=plans, steps=steps)
def test_a_request_is_admitted_iff_every_limit_has_room_and_a_refusal_records_nothing(
    limits: Limits, steps: list[tuple[str, int]]
) -> None:
    usage, now, flying = IdentityUsage(), 0.0, []
    for number, (action, used) in enumerate(steps):
        now += 0.5
        if action == "arrive":
            before = usage.states(limits, now)
            snapshot: Any = (list(usage.admissions), usage.tokens.total, usage.daily.total, set(usage.leases))
            admission = usage.admit(limits, now, f"m{number}", f"l{number}")
            assert admission.admitted == all(state.remaining > 0 for state in before)
            # What the admission says is what the usage now holds (headers and /api/me agree).
            assert admission.states == usage.states(limits, now)
            if admission.admitted:
                flying.append((admission, used))
            else:
                after = (list(usage.admissions), usage.tokens.total, usage.daily.total, set(usage.leases))
                assert after == snapshot
            if limits.concurrency is not None:
                assert len(usage.leases) <= limits.concurrency
        elif flying:
            admission, spent = flying.pop(0)
            if action == "end":
                usage.finish(admission, spent, now)
            else:
                usage.refund(admission)


@pytest.mark.parametrize(
    ("text", "limit", "seconds"),
    [("10/60", 10, 60.0), (" 30 / 60 ", 30, 60.0), ("1/0.5", 1, 0.5), ("20000/3600", 20000, 3600.0)],
)
def test_a_window_is_n_slash_w(text: str, limit: int, seconds: float) -> None:
    assert Window.parse(text) == Window(limit, seconds)


@pytest.mark.parametrize(
    "text", ["", "10", "10/", "/60", "0/60", "10/0", "-1/60", "10/-60", "ten/60", "10/60s", "1.5/60", "10 60"]
)
def test_anything_else_is_no_window(text: str) -> None:
    with pytest.raises(ValueError, match=r"N/W|positive"):
        Window.parse(text)
