"""Failed sign-ins per address: never more than N checked in any window, never refused below N."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gate.domain.sign_in_attempts import FailedSignIns, TooManySignIns

FAILURES, WINDOW = 3, 60.0

events = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=30, allow_nan=False), st.sampled_from(["a", "b"]), st.booleans()
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(events=events)
def test_never_more_than_n_failures_are_checked_in_any_window_nor_fewer_refused(
    events: list[tuple[float, str, bool]],
) -> None:
    attempts, now = FailedSignIns(FAILURES, WINDOW), 0.0
    checked: dict[str, list[float]] = {"a": [], "b": []}  # failed attempts that were let through
    for gap, address, succeeds in events:
        now += gap
        recent = [at for at in checked[address] if at > now - WINDOW]
        try:
            attempts.check(address, now)
        except TooManySignIns as refused:
            assert len(recent) >= FAILURES
            assert 0 < refused.retry_after <= WINDOW
            continue
        assert len(recent) < FAILURES
        if succeeds:
            attempts.succeeded(address)
            checked[address] = []
        else:
            attempts.failed(address, now)
            checked[address] = [*recent, now]


def test_the_addresses_remembered_are_bounded_oldest_forgotten_first() -> None:
    attempts = FailedSignIns(failures=1, window=WINDOW, addresses=2)
    for address in ("a", "b", "c"):
        attempts.failed(address, 0.0)
    assert len(attempts) == 2
    attempts.check("a", 1.0)  # forgotten: may try again
    with pytest.raises(TooManySignIns):
        attempts.check("c", 1.0)
