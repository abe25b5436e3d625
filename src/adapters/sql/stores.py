"""KeyStore and UsageStore on SQLAlchemy Core: plain statements, one transaction per call."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update

from ollama_gate.adapters.sql.database import Database
from ollama_gate.adapters.sql.tables import api_keys, usage_logs
from ollama_gate.domain.access import UsageScope
from ollama_gate.domain.identity import Tier
from ollama_gate.domain.keys import ApiKey
from ollama_gate.domain.usage import Outcome, UsageRecord

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
        async with self._db.transaction() as connection:
            await connection.execute(
                statement, [{"key_id": key_id, "used_at": at} for key_id, at in last_used.items()]
            )


def _usage_row(record: UsageRecord) -> dict[str, Any]:
    return {
        "timestamp": record.timestamp,
        "user": record.user,
        "tier": record.tier.value,
        "key_id": record.key_id,
        "client_ip": record.client_ip,
        "endpoint": record.endpoint,
        "model": record.model,
        "status": record.status,
        "outcome": record.outcome.value,
        "latency_ms": record.latency_ms,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "plan": record.plan,
        "queue_ms": record.queue_ms,
        "request_id": record.request_id,
    }


def _usage_record(row: Any) -> UsageRecord:
    return UsageRecord(
        id=row.id,
        timestamp=_utc(row.timestamp) or row.timestamp,
        user=row.user,
        tier=Tier(row.tier),
        key_id=row.key_id,
        client_ip=row.client_ip,
        endpoint=row.endpoint,
        model=row.model,
        status=row.status,
        outcome=Outcome(row.outcome),
        latency_ms=row.latency_ms,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        plan=row.plan,
        queue_ms=row.queue_ms,
        request_id=row.request_id,
    )


class SqlUsageStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def add_many(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        # Off the request path: a big batch on a busy database may take longer than a lookup.
        async with self._db.transaction(timeout=BATCH_TIMEOUT) as connection:
            # An executemany: one round trip per batch (asyncpg and sqlite3 both batch it).
            await connection.execute(insert(usage_logs), [_usage_row(r) for r in records])

    async def recent(self, limit: int, scope: UsageScope | None) -> list[UsageRecord]:
        query = select(usage_logs).order_by(usage_logs.c.id.desc()).limit(limit)
        if scope is not None:
            query = query.where(usage_logs.c.user == scope.user, usage_logs.c.tier == scope.tier.value)
        async with self._db.transaction() as connection:
            result = await connection.execute(query)
            return [_usage_record(row) for row in result]

    async def count(self) -> int:
        async with self._db.transaction() as connection:
            result = await connection.execute(select(func.count()).select_from(usage_logs))
            return int(result.scalar_one())
