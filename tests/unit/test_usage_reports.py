"""Usage reports on the in-memory store: what a query string may say, the summary's arithmetic, pages
with a cursor, the scope of every read, and an export that is produced as it is read."""

from __future__ import annotations

import contextlib
import csv
import io
import statistics
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollama_gate.adapters.memory_stores import InMemoryUsageStore
from ollama_gate.domain.access import Principal
from ollama_gate.domain.errors import Forbidden, InvalidRequest
from ollama_gate.domain.identity import Tier
from ollama_gate.domain.usage import Outcome, UsageRecord
from ollama_gate.domain.usage_query import (
    MAX_ROW_ID,
    GroupBy,
    UsageFilter,
    parse_group_by,
    percentile_cont,
    summarize,
    usage_filter,
)
from ollama_gate.entrypoints.controllers.usage import USAGE_FIELDS, csv_body, csv_lines, usage_view
from ollama_gate.services.usage_reports import UsageReports
from tests.unit.fakes import usage_record

EPOCH = datetime(2026, 11, 25, 23, 0, tzinfo=UTC)


def record(
    n: int,
    user: str = "alice",
    tier: Tier = Tier.MEMBER,
    latency: float = 10.0,
    outcome: Outcome = Outcome.OK,
    model: str | None = "smollm:latest",
    queue_ms: float | None = None,
) -> UsageRecord:
    return usage_record(
        EPOCH + timedelta(minutes=n),
        user=user,
        tier=tier,
        model=model,
        status=200 if outcome is Outcome.OK else 502,
        outcome=outcome,
        latency_ms=latency,
        prompt_tokens=n,
        completion_tokens=None if n % 3 == 0 else 2 * n,
        plan="member",
        queue_ms=queue_ms,
        request_id=f"r{n}",
    )


# -- what a query string may say ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"since": "yesterday"},
        {"until": "2026-13-01"},
        {"since": ""},
        {"since": "0001-01-01T00:00:00+01:00"},  # before year 1 in UTC: an overflow, not a 500
        {"since": "2026-11-26", "until": "2026-11-25"},
        {"status": "abc"},
        {"status": "99"},
        {"status": "600"},
        {"status": "2.0"},
        {"status": "1_000"},
        {"status": str(2**64)},
        {"outcome": "failed"},
        {"model": ""},
        {"model": "m" * 257},
        {"cursor": "0"},
        {"cursor": "-1"},
        {"cursor": str(MAX_ROW_ID + 1)},
        {"cursor": str(2**64)},
        {"cursor": "9" * 5000},
        {"cursor": "abc"},
        {"cursor": "١٢"},  # Arabic-Indic digits: str.isdigit says yes, a database would not
    ],
)
def test_bad_filter_values_are_invalid_requests_with_a_reason(values: dict[str, str]) -> None:
    with pytest.raises(InvalidRequest) as raised:
        usage_filter(**values)
    assert next(iter(values)) in raised.value.detail


def test_filter_values_are_read_as_utc_and_bounded() -> None:
    parsed = usage_filter(
        since="2026-11-25", until="2026-11-25T12:00:00+02:00", status="429", outcome="cancelled", cursor="17"
    )

    assert parsed.since == datetime(2026, 11, 25, tzinfo=UTC)
    assert parsed.until == datetime(2026, 11, 25, 10, tzinfo=UTC)
    assert (parsed.status, parsed.outcome, parsed.before_id) == (429, Outcome.CANCELLED, 17)
    assert usage_filter(cursor=str(MAX_ROW_ID)).before_id == MAX_ROW_ID
    assert usage_filter() == UsageFilter()


def test_group_by_defaults_to_user_and_names_the_choices() -> None:
    assert parse_group_by(None) is GroupBy.USER
    assert parse_group_by("hour") is GroupBy.HOUR
    with pytest.raises(InvalidRequest, match="user, model, plan, day, hour"):
        parse_group_by("week")


@given(
    st.dictionaries(st.sampled_from(["since", "until", "model", "status", "outcome", "cursor"]), st.text())
)
def test_no_query_string_value_raises_anything_but_invalid_request(values: dict[str, str]) -> None:
    with contextlib.suppress(InvalidRequest):
        usage_filter(**values)


# -- the summary's arithmetic ----------------------------------------------------------------------


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=2, max_size=200))
def test_percentiles_interpolate_between_the_closest_ranks(values: list[float]) -> None:
    ordered = sorted(values)
    # statistics' "inclusive" quantiles are the same definition as SQL's percentile_cont.
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    assert percentile_cont(ordered, 0.5) == pytest.approx(cuts[49], rel=1e-9, abs=1e-9)
    assert percentile_cont(ordered, 0.95) == pytest.approx(cuts[94], rel=1e-9, abs=1e-9)
    assert ordered[0] <= percentile_cont(ordered, 0.5) <= percentile_cont(ordered, 0.95) <= ordered[-1]  # type: ignore[operator]


def test_percentiles_of_nothing_and_of_one_value() -> None:
    assert percentile_cont([], 0.5) is None
    assert percentile_cont([7.5], 0.95) == 7.5


rows_strategy = st.lists(
    st.builds(
        record,
        n=st.integers(0, 60 * 48),
        user=st.sampled_from(["alice", "bob", "carol"]),
        latency=st.floats(0, 5000, allow_nan=False),
        outcome=st.sampled_from(list(Outcome)),
        model=st.sampled_from(["a", "b", None]),
        queue_ms=st.one_of(st.none(), st.floats(0, 100, allow_nan=False)),
    ),
    max_size=60,
)


@given(rows_strategy, st.sampled_from(list(GroupBy)))
def test_the_totals_of_the_groups_add_up_to_the_rows(rows: list[UsageRecord], group_by: GroupBy) -> None:
    groups = summarize(rows, group_by)

    assert sum(g.requests for g in groups) == len(rows)
    assert sum(g.prompt_tokens for g in groups) == sum(r.prompt_tokens or 0 for r in rows)
    assert sum(g.completion_tokens for g in groups) == sum(r.completion_tokens or 0 for r in rows)
    assert sum(g.errors for g in groups) == sum(r.outcome is Outcome.UPSTREAM_ERROR for r in rows)
    assert sum(g.cancelled for g in groups) == sum(r.outcome is Outcome.CANCELLED for r in rows)
    assert len({g.key for g in groups}) == len(groups)
    for group in groups:
        assert group.p50_latency_ms is not None and group.p95_latency_ms is not None
        assert group.p50_latency_ms <= group.p95_latency_ms


def test_time_groups_are_utc_days_and_hours_in_order() -> None:
    rows = [record(n) for n in (0, 59, 60, 61, 125)]  # 23:00, 23:59, then the next day's 00:00, 00:01, 01:05

    hours = summarize(rows, GroupBy.HOUR)
    days = summarize(rows, GroupBy.DAY)

    assert [(g.key, g.requests) for g in hours] == [
        ("2026-11-25T23:00Z", 2),
        ("2026-11-26T00:00Z", 2),
        ("2026-11-26T01:00Z", 1),
    ]
    assert [(g.key, g.requests) for g in days] == [("2026-11-25", 2), ("2026-11-26", 3)]


def test_the_mean_queue_time_counts_only_rows_that_queued() -> None:
    rows = [record(1, queue_ms=10.0), record(2, queue_ms=30.0), record(3, queue_ms=None)]
    (group,) = summarize(rows, GroupBy.USER)
    assert group.mean_queue_ms == 20.0
    (never,) = summarize([record(4)], GroupBy.USER)
    assert never.mean_queue_ms is None


def test_busiest_first_for_names() -> None:
    rows = [record(1, "carol"), record(2, "bob"), record(3, "bob"), record(4, "alice"), record(5, model=None)]
    assert [g.key for g in summarize(rows, GroupBy.USER)] == ["alice", "bob", "carol"]
    assert [g.key for g in summarize(rows, GroupBy.MODEL)] == ["smollm:latest", None]


# -- the service: scope, pages, summaries, exports ---------------------------------------------------


@pytest.fixture
async def reports(usage_store: InMemoryUsageStore) -> UsageReports:
    rows = [record(n, "alice" if n % 2 else "bob", latency=float(n)) for n in range(25)]
    rows.append(record(25, "anonymous", Tier.ANONYMOUS))
    await usage_store.add_many(rows)
    return UsageReports(usage_store)


async def test_pages_walk_every_row_once_and_say_when_they_end(reports: UsageReports) -> None:
    seen: list[int | None] = []
    filters = UsageFilter()
    pages = 0
    while True:
        page = await reports.page(Principal.admin(), 7, None, filters)
        pages += 1
        seen += [r.id for r in page.records]
        if page.next_cursor is None:
            break
        filters = UsageFilter(before_id=page.next_cursor)

    assert seen == list(range(26, 0, -1))
    assert pages == 4  # 7 + 7 + 7 + 5: no empty page at the end


async def test_a_page_that_is_exactly_full_has_no_next_cursor_when_nothing_follows(
    reports: UsageReports,
) -> None:
    page = await reports.page(Principal.member("alice"), 12, None)
    assert len(page.records) == 12 and page.next_cursor is None
    page = await reports.page(Principal.member("alice"), 11, None)
    assert page.next_cursor == page.records[-1].id


async def test_a_member_summarizes_and_exports_only_its_own_rows(reports: UsageReports) -> None:
    alice = Principal.member("alice")

    (own,) = await reports.summary(alice, None, UsageFilter(), GroupBy.USER)
    exported = [r async for chunk in reports.export(alice, None, UsageFilter(), chunk_size=5) for r in chunk]

    assert (own.key, own.requests) == ("alice", 12)
    assert {r.user for r in exported} == {"alice"} and len(exported) == 12
    assert [r.id for r in exported] == sorted(r.id for r in exported if r.id is not None)  # oldest first
    with pytest.raises(Forbidden):
        await reports.summary(alice, "bob", UsageFilter(), GroupBy.USER)
    with pytest.raises(Forbidden):
        reports.export(alice, "bob", UsageFilter())  # refused at once, before any row is read
    with pytest.raises(Forbidden):
        await reports.summary(Principal.nobody(), None, UsageFilter(), GroupBy.MODEL)


async def test_an_admin_summarizes_everyone_or_one_user(reports: UsageReports) -> None:
    everyone = await reports.summary(Principal.admin(), None, UsageFilter(), GroupBy.USER)
    anonymous = await reports.summary(Principal.admin(), "anonymous", UsageFilter(), GroupBy.USER)

    assert [(g.key, g.requests) for g in everyone] == [("bob", 13), ("alice", 12), ("anonymous", 1)]
    assert [(g.key, g.requests) for g in anonymous] == [("anonymous", 1)]


async def test_a_cursor_does_not_narrow_a_summary(reports: UsageReports) -> None:
    whole = await reports.summary(Principal.admin(), None, UsageFilter(), GroupBy.MODEL)
    with_cursor = await reports.summary(Principal.admin(), None, UsageFilter(before_id=3), GroupBy.MODEL)
    assert with_cursor == whole


# -- the CSV: header, quoting, produced as it is read -----------------------------------------------------


def test_csv_has_the_json_rows_fields_and_quotes_awkward_values() -> None:
    awkward = record(1, model='we"ird,\nmodel')
    text = csv_lines([awkward, record(2)], header=True).decode()

    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert tuple(parsed[0]) == USAGE_FIELDS == tuple(usage_view(awkward))
    assert parsed[1][USAGE_FIELDS.index("model")] == 'we"ird,\nmodel'
    assert '"we""ird,\nmodel"' in text and text.endswith("\r\n")
    assert parsed[1][USAGE_FIELDS.index("timestamp")] == "2026-11-25T23:01:00Z"
    assert parsed[1][USAGE_FIELDS.index("queue_ms")] == ""  # None is an empty field


async def test_the_export_stream_sends_its_first_rows_before_the_rest_are_read() -> None:
    produced: list[int] = []

    async def chunks() -> AsyncGenerator[list[UsageRecord], None]:
        for n in range(1, 1000):
            produced.append(n)
            yield [record(n)]

    rest = chunks()
    first = await anext(rest)
    body = csv_body(first, rest)

    opening = await anext(body)
    assert opening.startswith(b"id,timestamp,") and b"r1" in opening
    assert produced == [1]  # nothing more was read from the store
    assert b"r2" in await anext(body) and produced == [1, 2]
    await body.aclose()  # the client left: the store's iterator is closed too
    with pytest.raises(StopAsyncIteration):
        await anext(rest)
    assert produced == [1, 2]
