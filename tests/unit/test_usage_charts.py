"""The console's charts and top users (services.console.UsageCharts) over the in-memory store."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollama_gate.adapters.memory_stores import InMemoryUsageStore
from ollama_gate.domain.access import Principal
from ollama_gate.domain.errors import Forbidden
from ollama_gate.domain.usage import Outcome, UsageRecord
from ollama_gate.domain.usage_series import BucketCount, SeriesRange, regroup
from ollama_gate.services.console import UsageCharts
from tests.unit.fakes import FakeClock, usage_record


def _row(
    clock: FakeClock, seconds_ago: float, user: str, tokens: int, outcome: Outcome = Outcome.OK
) -> UsageRecord:
    return usage_record(
        clock.now() - timedelta(seconds=seconds_ago),
        user=user,
        key_id=1,
        outcome=outcome,
        latency_ms=5.0,
        prompt_tokens=tokens,
    )


async def test_the_hour_and_the_day_count_what_each_principal_may_see() -> None:
    clock, store = FakeClock(), InMemoryUsageStore()
    await store.add_many(
        [
            _row(clock, 30, "alice", 10),
            _row(clock, 600, "alice", 5),
            _row(clock, 7200, "bob", 100, Outcome.UPSTREAM_ERROR),  # in the day, not the hour
            _row(clock, 2 * 86_400, "bob", 1000),  # in neither
        ]
    )
    charts = UsageCharts(store, clock)
    hour, day = await charts.hour_and_day(Principal.admin())
    assert (hour.total_requests, hour.total_tokens) == (2, 15)
    assert (day.total_requests, day.total_tokens) == (3, 115)
    assert len(hour.times) == 60 and len(day.times) == 288
    alone = await charts.series(Principal.member("alice"), SeriesRange.DAY)
    assert (alone.total_requests, alone.total_tokens) == (2, 15)
    top = await charts.top_users(Principal.admin(), 10)
    assert [(u.user, u.requests, u.tokens, u.errors) for u in top] == [
        ("alice", 2, 15, 0),
        ("bob", 1, 100, 1),
    ]
    with pytest.raises(Forbidden):
        await charts.top_users(Principal.member("alice"), 10)


@given(
    st.lists(
        st.builds(BucketCount, st.integers(-(10**6), 10**6), st.integers(0, 1000), st.integers(0, 10**6))
    ),
    st.sampled_from([(60, 60), (60, 300), (60, 3600), (300, 3600)]),
)
def test_regrouping_keeps_every_count(counts: list[BucketCount], sizes: tuple[int, int]) -> None:
    small, large = sizes
    merged = regroup(counts, small, large)
    assert sum(b.requests for b in merged) == sum(b.requests for b in counts)
    assert sum(b.tokens for b in merged) == sum(b.tokens for b in counts)
    assert [b.bucket for b in merged] == sorted({b.bucket * small // large for b in counts})
