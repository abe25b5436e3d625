"""In-process key and usage stores: the unit tests' fakes, and a store for throwaway gateways."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime

from ollama_gate.domain.access import UsageScope
from ollama_gate.domain.errors import Conflict, StoreUnavailable
from ollama_gate.domain.keys import ApiKey
from ollama_gate.domain.plans import Plan, plan_in_use
from ollama_gate.domain.usage import Outcome, UsageRecord
from ollama_gate.domain.usage_query import ALL_ROWS, GroupBy, UsageFilter, UsageGroup, in_scope, summarize
from ollama_gate.domain.usage_series import BucketCount, UserTotals
from ollama_gate.domain.users import UserRecord


class InMemoryKeyStore:
    def __init__(self) -> None:
        self._keys: dict[int, ApiKey] = {}
        self._hashes: dict[str, int] = {}
        self.available = True
        self.lookups = 0

    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailable()

    async def add(
        self,
        user_id: str,
        name: str,
        key_hash: str,
        prefix: str,
        created_at: datetime,
        plan: str | None = None,
    ) -> ApiKey:
        self._check()
        key = ApiKey(len(self._keys) + 1, user_id, name, prefix, created_at, plan=plan)
        self._keys[key.id] = key
        self._hashes[key_hash] = key.id
        return key

    async def find_by_hash(self, key_hash: str) -> ApiKey | None:
        self._check()
        self.lookups += 1
        key_id = self._hashes.get(key_hash)
        return None if key_id is None else self._keys[key_id]

    async def find_by_hashes(self, key_hashes: Sequence[str]) -> dict[str, ApiKey]:
        self._check()
        self.lookups += 1
        return {h: self._keys[self._hashes[h]] for h in key_hashes if h in self._hashes}

    async def get(self, key_id: int) -> ApiKey | None:
        self._check()
        return self._keys.get(key_id)

    async def list(self, user_id: str | None) -> list[ApiKey]:
        self._check()
        keys = [k for k in self._keys.values() if user_id is None or k.user_id == user_id]
        return sorted(keys, key=lambda k: k.id, reverse=True)

    async def revoke(self, key_id: int, at: datetime) -> ApiKey | None:
        self._check()
        key = self._keys.get(key_id)
        if key is None:
            return None
        if key.revoked_at is None:
            key = self._keys[key_id] = dataclasses.replace(key, revoked_at=at)
        return key

    async def touch(self, last_used: dict[int, datetime]) -> None:
        self._check()
        for key_id, at in last_used.items():
            if key_id in self._keys:
                self._keys[key_id] = dataclasses.replace(self._keys[key_id], last_used_at=at)


class InMemoryUsageStore:
    def __init__(self) -> None:
        self.rows: list[UsageRecord] = []
        self.available = True
        self.batches = 0

    async def add_many(self, records: Sequence[UsageRecord]) -> None:
        if not self.available:
            raise StoreUnavailable()
        self.batches += 1
        for record in records:
            self.rows.append(dataclasses.replace(record, id=len(self.rows) + 1))

    def _selected(self, scope: UsageScope | None, filters: UsageFilter) -> list[UsageRecord]:
        if not self.available:
            raise StoreUnavailable()
        return [r for r in self.rows if in_scope(r, scope) and filters.admits(r)]

    async def recent(
        self, limit: int, scope: UsageScope | None, filters: UsageFilter = ALL_ROWS
    ) -> list[UsageRecord]:
        return self._selected(scope, filters)[::-1][:limit]

    async def summary(
        self, scope: UsageScope | None, filters: UsageFilter, group_by: GroupBy
    ) -> list[UsageGroup]:
        return summarize(self._selected(scope, filters), group_by)

    async def export(
        self, scope: UsageScope | None, filters: UsageFilter, chunk_size: int = 1000
    ) -> AsyncGenerator[list[UsageRecord], None]:
        rows = self._selected(scope, filters)
        for start in range(0, len(rows), chunk_size):
            yield rows[start : start + chunk_size]

    async def count(self) -> int:
        if not self.available:
            raise StoreUnavailable()
        return len(self.rows)

    async def buckets(
        self, scope: UsageScope | None, since: datetime, until: datetime, bucket_seconds: int
    ) -> list[BucketCount]:
        counts: dict[int, list[int]] = {}
        for row in self._selected(scope, UsageFilter(since=since, until=until)):
            bucket = math.floor(row.timestamp.timestamp()) // bucket_seconds
            totals = counts.setdefault(bucket, [0, 0])
            totals[0] += 1
            totals[1] += (row.prompt_tokens or 0) + (row.completion_tokens or 0)
        return [
            BucketCount(bucket, requests, tokens) for bucket, (requests, tokens) in sorted(counts.items())
        ]

    async def top_users(self, since: datetime, until: datetime, limit: int) -> list[UserTotals]:
        totals: dict[str, list[int]] = {}
        for row in self._selected(None, UsageFilter(since=since, until=until)):
            counted = totals.setdefault(row.user, [0, 0, 0])
            counted[0] += 1
            counted[1] += (row.prompt_tokens or 0) + (row.completion_tokens or 0)
            counted[2] += row.outcome is Outcome.UPSTREAM_ERROR
        ranked = sorted(totals.items(), key=lambda item: (-item[1][0], item[0]))
        return [UserTotals(user, *counted) for user, counted in ranked[:limit]]


class InMemoryPlanStore:
    """Plans and assignments in memory, beside an in-memory key store (for who uses a plan)."""

    def __init__(self, keys: InMemoryKeyStore) -> None:
        self._keys = keys
        self._plans: dict[str, Plan] = {}
        self._assigned: dict[str, str] = {}
        self._revision = 0
        self.available = True

    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailable()

    async def revision(self) -> int:
        self._check()
        return self._revision

    async def plans(self) -> list[Plan]:
        self._check()
        return list(self._plans.values())

    async def save_plan(self, plan: Plan) -> None:
        self._check()
        self._plans[plan.name] = plan
        self._revision += 1

    async def delete_plan(self, name: str) -> bool:
        self._check()
        if name not in self._plans:
            return False
        users = sum(1 for plan in self._assigned.values() if plan == name)
        keys = sum(1 for key in await self._keys.list(None) if key.plan == name and key.active)
        if users or keys:
            raise Conflict(plan_in_use(name, users, keys))
        del self._plans[name]
        self._revision += 1
        return True

    async def assignments(self) -> dict[str, str]:
        self._check()
        return dict(self._assigned)

    async def assign(self, user_id: str, plan: str) -> None:
        self._check()
        self._assigned[user_id] = plan
        self._revision += 1

    async def users(self, default_plan: str) -> list[UserRecord]:
        self._check()
        keys = await self._keys.list(None)
        ids = sorted({key.user_id for key in keys} | set(self._assigned))
        return [
            UserRecord(
                user_id,
                self._assigned.get(user_id, default_plan),
                sum(1 for key in keys if key.user_id == user_id and key.active),
            )
            for user_id in ids
        ]
