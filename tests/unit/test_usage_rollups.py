"""The rollups of a batch of usage rows: every row counted once in its minute, its user's minute and its
user's hour; nothing else counted; keys in the tables' order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gate.domain.identity import Tier
from ollama_gate.domain.usage import Outcome, UsageRecord
from ollama_gate.domain.usage_rollups import HOUR, MINUTE, rollups
from tests.unit.fakes import usage_record

START = datetime(2026, 11, 30, 23, 58, tzinfo=UTC)

records = st.builds(
    lambda seconds, user, tier, prompt, completion, outcome: usage_record(
        START + timedelta(seconds=seconds),
        user=user,
        tier=tier,
        outcome=outcome,
        prompt_tokens=prompt,
        completion_tokens=completion,
    ),
    st.floats(min_value=0, max_value=3 * HOUR, allow_nan=False),
    st.sampled_from(["alice", "bob", "anonymous"]),
    st.sampled_from(list(Tier)),
    st.none() | st.integers(0, 5000),
    st.none() | st.integers(0, 5000),
    st.sampled_from(list(Outcome)),
)


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(records, max_size=60))
def test_every_row_is_counted_once_in_each_rollup(batch: list[UsageRecord]) -> None:
    counted = rollups(batch)
    tokens = sum((r.prompt_tokens or 0) + (r.completion_tokens or 0) for r in batch)
    errors = sum(r.outcome is Outcome.UPSTREAM_ERROR for r in batch)
    for table in (counted.minutes, counted.user_minutes, counted.user_hours):
        assert sum(c.requests for c in table.values()) == len(batch)
        assert sum(c.tokens for c in table.values()) == tokens
        assert list(table) == sorted(table)  # one lock order for concurrent writers
    assert sum(c.errors for c in counted.user_hours.values()) == errors
    for (user, tier, minute), c in counted.user_minutes.items():
        mine = [r for r in batch if (r.user, r.tier.value) == (user, tier)]
        assert c.requests == sum(int(r.timestamp.timestamp()) // MINUTE == minute for r in mine)
    for (hour, user, tier), c in counted.user_hours.items():
        mine = [r for r in batch if (r.user, r.tier.value) == (user, tier)]
        assert c.requests == sum(int(r.timestamp.timestamp()) // HOUR == hour for r in mine)
