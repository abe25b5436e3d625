"""KeyStore and UsageStore on SQLAlchemy Core: plain statements, one transaction per call."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    CompoundSelect,
    Float,
    Integer,
    Select,
    String,
    bindparam,
    cast,
    func,
    insert,
    literal,
    literal_column,
    null,
    select,
    tuple_,
    union,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.sqlite.aiosqlite import dialect as sqlite_dialect

from ollama_gate.adapters.sql.database import Database
from ollama_gate.adapters.sql.tables import api_keys, usage_logs
from ollama_gate.adapters.sql.usage_rollups import add_rollups, minute_counts, top_users_by_hour
from ollama_gate.domain.access import UsageScope
from ollama_gate.domain.errors import StoreUnavailable
from ollama_gate.domain.identity import Tier
from ollama_gate.domain.keys import ApiKey
from ollama_gate.domain.usage import Outcome, UsageRecord
from ollama_gate.domain.usage_query import (
    ALL_ROWS,
    MAX_MODEL_LENGTH,
    PERCENTILES,
    GroupBy,
    UsageFilter,
    UsageGroup,
    interpolate,
    ordered_groups,
    percentile_ranks,
    rounded,
)
from ollama_gate.domain.usage_rollups import HOUR, MINUTE, aligned, rollups
from ollama_gate.domain.usage_series import BucketCount, UserTotals, regroup

BATCH_TIMEOUT = 30.0


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        user_id=row.user_id,
        name=row.name,
        prefix=row.prefix,
        created_at=_utc(row.created_at) or row.created_at,
        last_used_at=_utc(row.last_used_at),
        revoked_at=_utc(row.revoked_at),
        plan=row.plan,
    )


_KEY_COLUMNS = (
    api_keys.c.id,
    api_keys.c.user_id,
    api_keys.c.name,
    api_keys.c.prefix,
    api_keys.c.created_at,
    api_keys.c.last_used_at,
    api_keys.c.revoked_at,
    api_keys.c.plan,
)


# Bound parameters per query: SQLite allows 32,766, and one query per revalidation burst is the point.
_HASHES_PER_QUERY = 500


class SqlKeyStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def add(
        self,
        user_id: str,
        name: str,
        key_hash: str,
        prefix: str,
        created_at: datetime,
        plan: str | None = None,
    ) -> ApiKey:
        async with self._db.transaction() as connection:
            result = await connection.execute(
                insert(api_keys)
                .values(
                    user_id=user_id,
                    name=name,
                    key_hash=key_hash,
                    prefix=prefix,
                    created_at=created_at,
                    plan=plan,
                )
                .returning(*_KEY_COLUMNS)
            )
            return _key(result.one())

    async def find_by_hash(self, key_hash: str) -> ApiKey | None:
        async with self._db.transaction() as connection:
            result = await connection.execute(select(*_KEY_COLUMNS).where(api_keys.c.key_hash == key_hash))
            row = result.one_or_none()
        return None if row is None else _key(row)

    async def find_by_hashes(self, key_hashes: Sequence[str]) -> dict[str, ApiKey]:
        found: dict[str, ApiKey] = {}
        for start in range(0, len(key_hashes), _HASHES_PER_QUERY):
            chunk = list(key_hashes[start : start + _HASHES_PER_QUERY])
            async with self._db.transaction() as connection:
                result = await connection.execute(
                    select(api_keys.c.key_hash, *_KEY_COLUMNS).where(api_keys.c.key_hash.in_(chunk))
                )
                found.update((row.key_hash, _key(row)) for row in result)
        return found

    async def get(self, key_id: int) -> ApiKey | None:
        async with self._db.transaction() as connection:
            result = await connection.execute(select(*_KEY_COLUMNS).where(api_keys.c.id == key_id))
            row = result.one_or_none()
        return None if row is None else _key(row)

    async def list(self, user_id: str | None) -> list[ApiKey]:
        query = select(*_KEY_COLUMNS).order_by(api_keys.c.id.desc())
        if user_id is not None:
            query = query.where(api_keys.c.user_id == user_id)
        async with self._db.transaction() as connection:
            result = await connection.execute(query)
            return [_key(row) for row in result]

    async def revoke(self, key_id: int, at: datetime) -> ApiKey | None:
        async with self._db.transaction() as connection:
            await connection.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )
            result = await connection.execute(select(*_KEY_COLUMNS).where(api_keys.c.id == key_id))
            row = result.one_or_none()
        return None if row is None else _key(row)

    async def touch(self, last_used: dict[int, datetime]) -> None:
        if not last_used:
            return
        statement = (
            update(api_keys)
            .where(api_keys.c.id == bindparam("key_id"))
            .values(last_used_at=bindparam("used_at"))
        )
        # In key order: instances touching the same keys then lock their rows in the same order (in the
        # order of use, two of them deadlocked on PostgreSQL and lost a batch: seen under --workers 2).
        rows = [{"key_id": key_id, "used_at": at} for key_id, at in sorted(last_used.items())]
        async with self._db.transaction() as connection:
            await connection.execute(statement, rows)


# What add_many writes, in this order. The batch goes to the driver itself: SQLAlchemy's executemany
# builds and processes a parameter dict per row, which cost more than the insert (measured: 16 us of CPU
# per row, against 4 with tuples to sqlite3 and fewer with PostgreSQL's COPY).
_WRITTEN = tuple(column.name for column in usage_logs.columns if column.name != "id")


@cache
def _postgres_unavailable() -> tuple[type[Exception], ...]:
    """The driver's errors that mean PostgreSQL cannot be reached. asyncpg is imported on first use: a
    gateway on SQLite never loads it (6 MB of RSS)."""
    import asyncpg

    return (
        asyncpg.PostgresConnectionError,  # class 08: the connection failed
        asyncpg.InterfaceError,  # the connection is closed
        asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, cannot connect now
    )


# Compiled once, by SQLAlchemy itself: positional `?` parameters in _WRITTEN order.
_SQLITE_INSERT = str(
    insert(usage_logs).values({name: bindparam(name) for name in _WRITTEN}).compile(dialect=sqlite_dialect())
)


def _sqlite_timestamp(moment: datetime) -> str:
    # SQLAlchemy's storage format for DateTime on SQLite (what it reads back), the moment in UTC.
    moment = moment.astimezone(UTC) if moment.tzinfo is not None else moment
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}"
    )


def _written_values(record: UsageRecord, timestamp: Any) -> tuple[Any, ...]:
    """A row's values in _WRITTEN order."""
    model = record.model
    return (
        timestamp,
        record.user,
        record.tier.value,
        record.key_id,
        record.client_ip,
        record.endpoint,
        # The model a request body named, of any length: PostgreSQL refuses a value longer than the
        # column, and the whole batch (other callers' rows with it) would be lost.
        model[:MAX_MODEL_LENGTH] if model is not None else None,
        record.status,
        record.outcome.value,
        record.latency_ms,
        record.prompt_tokens,
        record.completion_tokens,
        record.plan,
        record.queue_ms,
        record.request_id,
    )


_TIERS = {tier.value: tier for tier in Tier}
_OUTCOMES = {outcome.value: outcome for outcome in Outcome}
# The columns a usage query selects, in the order _usage_record unpacks them.
_USAGE_COLUMNS = (
    usage_logs.c.id,
    usage_logs.c.timestamp,
    usage_logs.c.user,
    usage_logs.c.tier,
    usage_logs.c.key_id,
    usage_logs.c.client_ip,
    usage_logs.c.endpoint,
    usage_logs.c.model,
    usage_logs.c.status,
    usage_logs.c.outcome,
    usage_logs.c.latency_ms,
    usage_logs.c.prompt_tokens,
    usage_logs.c.completion_tokens,
    usage_logs.c.plan,
    usage_logs.c.queue_ms,
    usage_logs.c.request_id,
)


def _usage_record(row: Any) -> UsageRecord:
    # Unpacked by position, the enums by dict lookup: an export builds a million of these.
    (id_, timestamp, user, tier, key_id, client_ip, endpoint, model, status, outcome, *rest) = row
    latency_ms, prompt_tokens, completion_tokens, plan, queue_ms, request_id = rest
    return UsageRecord(
        timestamp=timestamp if timestamp.tzinfo is not None else timestamp.replace(tzinfo=UTC),
        user=user,
        tier=_TIERS[tier],
        key_id=key_id,
        client_ip=client_ip,
        endpoint=endpoint,
        model=model,
        status=status,
        outcome=_OUTCOMES[outcome],
        latency_ms=latency_ms,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        id=id_,
        plan=plan,
        queue_ms=queue_ms,
        request_id=request_id,
    )


class SqlUsageStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def add_many(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        # Off the request path: a big batch on a busy database may take longer than a lookup.
        # The rollups in the rows' own transaction: the counts are the rows, whatever fails.
        counted = rollups(records)
        async with self._db.transaction(timeout=BATCH_TIMEOUT) as connection:
            if self._db.is_sqlite:
                rows = [_written_values(r, _sqlite_timestamp(r.timestamp)) for r in records]
                await connection.exec_driver_sql(_SQLITE_INSERT, rows)  # one executemany
                await add_rollups(connection, counted, sqlite=True)
            else:
                # PostgreSQL: COPY, one round trip and no statement per row. The driver's own calls, so
                # their connection errors are mapped here as SQLAlchemy's would be.
                raw = await connection.get_raw_connection()
                copy = raw.driver_connection.copy_records_to_table  # type: ignore[union-attr]
                rows = [_written_values(r, r.timestamp) for r in records]
                try:
                    await copy("usage_logs", records=rows, columns=_WRITTEN)
                    await add_rollups(connection, counted, sqlite=False)
                except _postgres_unavailable() as error:
                    raise StoreUnavailable() from error

    async def recent(
        self, limit: int, scope: UsageScope | None, filters: UsageFilter = ALL_ROWS
    ) -> list[UsageRecord]:
        query = (
            select(*_USAGE_COLUMNS).where(*_conditions(scope, filters)).order_by(_c.id.desc()).limit(limit)
        )
        async with self._db.transaction() as connection:
            result = await connection.execute(query)
            return [_usage_record(row) for row in result]

    async def summary(
        self, scope: UsageScope | None, filters: UsageFilter, group_by: GroupBy
    ) -> list[UsageGroup]:
        conditions = _conditions(scope, filters)
        sqlite = self._db.is_sqlite
        query = (
            _sqlite_summary(_sqlite_group(group_by), conditions)
            if sqlite
            else _postgres_summary(_postgres_group(group_by), conditions)
        )
        # A report reads every row in its range: a million take seconds, not the lookups' bound.
        async with self._db.transaction(timeout=SUMMARY_TIMEOUT) as connection:
            rows = (await connection.execute(query)).all()
        groups = _sqlite_groups(rows, group_by) if sqlite else _postgres_groups(rows, group_by)
        return ordered_groups(groups, group_by)

    async def export(
        self, scope: UsageScope | None, filters: UsageFilter, chunk_size: int = 1000
    ) -> AsyncGenerator[list[UsageRecord], None]:
        query = select(*_USAGE_COLUMNS).where(*_conditions(scope, filters)).order_by(_c.id)
        # Closed with this generator (a client that leaves mid-export), not whenever it is collected.
        async with aclosing(self._db.stream(query, chunk_size)) as chunks:
            async for rows in chunks:
                yield [_usage_record(row) for row in rows]

    async def count(self) -> int:
        async with self._db.transaction() as connection:
            result = await connection.execute(select(func.count()).select_from(usage_logs))
            return int(result.scalar_one())

    async def buckets(
        self, scope: UsageScope | None, since: datetime, until: datetime, bucket_seconds: int
    ) -> list[BucketCount]:
        start, end = since.timestamp(), until.timestamp()
        if bucket_seconds % MINUTE == 0 and aligned(start, MINUTE) and aligned(end, MINUTE):
            async with self._db.transaction() as connection:
                minutes = await minute_counts(connection, scope, int(start) // MINUTE, int(end) // MINUTE)
            return regroup(minutes, MINUTE, bucket_seconds)
        # A range that does not fall on whole minutes: counted from the rows themselves.
        conditions = _conditions(scope, UsageFilter(since=since, until=until))
        used = func.coalesce(_c.prompt_tokens, 0) + func.coalesce(_c.completion_tokens, 0)
        totals = (func.count().label("requests"), func.coalesce(func.sum(used), 0).label("tokens"))
        if self._db.is_sqlite and bucket_seconds % 60 == 0:
            # Stored as UTC text: the minute is a prefix ('YYYY-MM-DD HH:MM'), far cheaper per row than
            # a date function; minutes are summed into the buckets here.
            minute = func.substr(_c.timestamp, 1, 16, type_=String)
            query = select(minute.label("m"), *totals).where(*conditions).group_by(minute)
            async with self._db.transaction(timeout=SUMMARY_TIMEOUT) as connection:
                rows = (await connection.execute(query)).all()
            minutes = [BucketCount(_minute_number(row.m), int(row.requests), int(row.tokens)) for row in rows]
            return regroup(minutes, 60, bucket_seconds)
        if self._db.is_sqlite:
            epoch: ColumnElement[Any] = cast(func.strftime("%s", _c.timestamp), Integer)
        else:
            epoch = cast(func.floor(func.extract("epoch", _c.timestamp)), BigInteger)
        bucket = epoch // bucket_seconds  # integer division on both
        query = select(bucket.label("b"), *totals).where(*conditions).group_by(bucket)
        async with self._db.transaction(timeout=SUMMARY_TIMEOUT) as connection:
            rows = (await connection.execute(query)).all()
        return [BucketCount(int(row.b), int(row.requests), int(row.tokens)) for row in rows]

    async def top_users(self, since: datetime, until: datetime, limit: int) -> list[UserTotals]:
        start, end = since.timestamp(), until.timestamp()
        if aligned(start, HOUR) and aligned(end, HOUR):
            async with self._db.transaction() as connection:
                return await top_users_by_hour(connection, int(start) // HOUR, int(end) // HOUR, limit)
        used = func.coalesce(_c.prompt_tokens, 0) + func.coalesce(_c.completion_tokens, 0)
        # `|| ''`, as in the summary: grouping in the (user, id) index's order would visit every row of
        # the table through it; the time index and a small sort are what the range needs.
        user = _c.user.concat("")
        requests = func.count().label("requests")
        query = (
            select(
                user.label("u"),
                requests,
                func.coalesce(func.sum(used), 0).label("tokens"),
                func.count().filter(_c.outcome == Outcome.UPSTREAM_ERROR.value).label("errors"),
            )
            .where(*_conditions(None, UsageFilter(since=since, until=until)))
            .group_by(user)
            .order_by(requests.desc(), user)
            .limit(limit)
        )
        async with self._db.transaction(timeout=SUMMARY_TIMEOUT) as connection:
            rows = (await connection.execute(query)).all()
        return [UserTotals(str(r.u), int(r.requests), int(r.tokens), int(r.errors)) for r in rows]


def _minute_number(text: str) -> int:
    """'YYYY-MM-DD HH:MM' (UTC) as minutes since the epoch."""
    moment = datetime(
        int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]), tzinfo=UTC
    )
    return int(moment.timestamp()) // 60


# -- usage queries -----------------------------------------------------------------------------------

SUMMARY_TIMEOUT = 120.0
_c = usage_logs.c


def _conditions(scope: UsageScope | None, filters: UsageFilter) -> list[ColumnElement[bool]]:
    """The WHERE of a usage query: whose rows, then the filters (all bounded by the domain already)."""
    conditions: list[ColumnElement[bool]] = []
    if scope is not None:
        conditions += [_c.user == scope.user, _c.tier == scope.tier.value]
    if filters.since is not None:
        conditions.append(_c.timestamp >= filters.since)
    if filters.until is not None:
        conditions.append(_c.timestamp < filters.until)
    if filters.model is not None:
        conditions.append(_c.model == filters.model)
    if filters.status is not None:
        conditions.append(_c.status == filters.status)
    if filters.outcome is not None:
        conditions.append(_c.outcome == filters.outcome.value)
    if filters.before_id is not None:
        conditions.append(_c.id < filters.before_id)
    return conditions


def _totals(group: ColumnElement[Any]) -> list[ColumnElement[Any]]:
    """The columns every summary row has, after its group key: what the domain's UsageGroup holds."""
    return [
        group.label("g"),
        func.count().label("requests"),
        func.coalesce(func.sum(_c.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(_c.completion_tokens), 0).label("completion_tokens"),
        func.count().filter(_c.outcome == Outcome.UPSTREAM_ERROR.value).label("errors"),
        func.count().filter(_c.outcome == Outcome.CANCELLED.value).label("cancelled"),
        func.avg(_c.queue_ms).label("mean_queue_ms"),
    ]


# SQLite groups rows without a model or plan under this blob, which no text key equals: the row-value IN
# below never matches a NULL, and they must keep their percentiles.
_NULL_KEY: ColumnElement[bytes] = literal_column("x'00'")


def _sqlite_group(group_by: GroupBy) -> ColumnElement[Any]:
    # Timestamps are stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC: a day and an hour are prefixes.
    if group_by is GroupBy.DAY:
        return func.substr(_c.timestamp, 1, 10, type_=String)
    if group_by is GroupBy.HOUR:
        return func.substr(_c.timestamp, 1, 13, type_=String)
    column = {GroupBy.USER: _c.user, GroupBy.MODEL: _c.model, GroupBy.PLAN: _c.plan}[group_by]
    # `|| ''` also keeps SQLite from walking the (user, id) index to group by user: a table scan and a
    # sort is twice as fast as a million index-ordered row lookups. A WHERE on the user still uses it.
    return func.coalesce(column.concat(""), _NULL_KEY)


def _sqlite_summary(group: ColumnElement[Any], conditions: list[ColumnElement[bool]]) -> CompoundSelect[Any]:
    """SQLite has no percentile_cont. One statement, two kinds of rows (`kind`):

    0. the totals of each group (one pass, grouped);
    1. for each group, the latencies at the ranks percentile_cont interpolates between: every row is
       ranked within its group by latency (row_number over one sort) and kept only if its (group, rank)
       is one of those, a row-value IN whose list SQLite builds once, as an index.

    `_sqlite_groups` interpolates. Nothing of the size of the table is materialized but the sort, and
    the cost does not grow with the number of groups (a join of the ranked rows to the totals would:
    SQLite may scan the totals once per ranked row).
    """
    totals = select(*_totals(group)).where(*conditions).group_by(group).cte("totals")
    wanted = []
    for fraction in PERCENTILES:
        low = cast((totals.c.requests - 1) * fraction, Integer)  # truncates: floor, for it is never negative
        wanted += [select(totals.c.g, low.label("rank")), select(totals.c.g, (low + 1).label("rank"))]
    targets = union(*wanted).subquery("targets")
    ranked = (
        select(
            group.label("g"),
            _c.latency_ms,
            (func.row_number().over(partition_by=group, order_by=_c.latency_ms) - 1).label("rank"),
        )
        .where(*conditions)
        .subquery("ranked")
    )
    return union_all(
        select(literal(0).label("kind"), *[totals.c[name] for name in _TOTAL_NAMES], null(), null()),
        select(
            literal(1),
            ranked.c.g,
            *[null() for _ in _TOTAL_NAMES[1:]],
            ranked.c.rank,
            ranked.c.latency_ms,
        ).where(tuple_(ranked.c.g, ranked.c.rank).in_(select(targets.c.g, targets.c.rank))),
    )


def _sqlite_groups(rows: Sequence[Any], group_by: GroupBy) -> list[UsageGroup]:
    """The groups from `_sqlite_summary`'s rows: the totals, and the percentiles interpolated from the
    latencies at their ranks exactly as percentile_cont does."""
    at_rank: dict[Any, dict[int, float]] = {}
    for row in rows:
        if row[0] == 1:
            at_rank.setdefault(row[1], {})[int(row[-2])] = float(row[-1])
    groups = []
    for row in rows:
        if row[0] != 0:
            continue
        latencies = at_rank[row.g]
        percentiles = []
        for fraction in PERCENTILES:
            low, weight = percentile_ranks(int(row.requests), fraction)
            percentiles.append(interpolate(latencies[low], latencies.get(low + 1), weight))
        groups.append(_group(row, group_by, *percentiles))
    return groups


def _postgres_group(group_by: GroupBy) -> ColumnElement[Any]:
    if group_by.is_time:
        field = "day" if group_by is GroupBy.DAY else "hour"
        return func.date_trunc(field, func.timezone("UTC", _c.timestamp))
    if group_by is GroupBy.USER:
        # As on SQLite: not in (user, id) index order, a million random heap reads; a scan and a sort.
        return _c.user.concat("")
    return {GroupBy.MODEL: _c.model, GroupBy.PLAN: _c.plan}[group_by]


def _postgres_summary(group: ColumnElement[Any], conditions: list[ColumnElement[bool]]) -> Select[Any]:
    # One ordered-set aggregate with an array of fractions: one sort per group for both percentiles.
    fractions = literal_column("ARRAY[" + ", ".join(repr(f) for f in PERCENTILES) + "]", ARRAY(Float))
    percentiles = func.percentile_cont(fractions).within_group(_c.latency_ms).label("percentiles")
    return select(*_totals(group), percentiles).where(*conditions).group_by(group)


_TOTAL_NAMES = ("g", "requests", "prompt_tokens", "completion_tokens", "errors", "cancelled", "mean_queue_ms")


def _group_key(value: Any, group_by: GroupBy) -> str | None:
    if value is None or isinstance(value, bytes):  # SQLite's _NULL_KEY
        return None
    if not group_by.is_time:
        return str(value)
    if isinstance(value, datetime):  # PostgreSQL: date_trunc's timestamp, in UTC
        return value.strftime("%Y-%m-%d") if group_by is GroupBy.DAY else value.strftime("%Y-%m-%dT%H:00Z")
    text = str(value)  # SQLite: 'YYYY-MM-DD' or 'YYYY-MM-DD HH'
    return text if group_by is GroupBy.DAY else f"{text[:10]}T{text[11:13]}:00Z"


def _group(row: Any, group_by: GroupBy, p50: float | None, p95: float | None) -> UsageGroup:
    return UsageGroup(
        key=_group_key(row.g, group_by),
        requests=int(row.requests),
        prompt_tokens=int(row.prompt_tokens),
        completion_tokens=int(row.completion_tokens),
        errors=int(row.errors),
        cancelled=int(row.cancelled),
        p50_latency_ms=rounded(p50),
        p95_latency_ms=rounded(p95),
        mean_queue_ms=rounded(row.mean_queue_ms),
    )


def _postgres_groups(rows: Sequence[Any], group_by: GroupBy) -> list[UsageGroup]:
    return [_group(row, group_by, *(row.percentiles or (None, None))) for row in rows]
