"""In-process key and usage stores: the unit tests' fakes, and a store for throwaway gateways."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

from ollama_gate.domain.access import UsageScope
from ollama_gate.domain.errors import StoreUnavailable
from ollama_gate.domain.keys import ApiKey
from ollama_gate.domain.usage import UsageRecord


class InMemoryKeyStore:
    def __init__(self) -> None:
        self._keys: dict[int, ApiKey] = {}
        self._hashes: dict[str, int] = {}
        self.available = True
        self.lookups = 0

    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailable()

    async def add(self, user_id: str, name: str, key_hash: str, prefix: str, created_at: datetime) -> ApiKey:
        self._check()
        key = ApiKey(len(self._keys) + 1, user_id, name, prefix, created_at)
        self._keys[key.id] = key
        self._hashes[key_hash] = key.id
        return key

    async def find_by_hash(self, key_hash: str) -> ApiKey | None:
        self._check()
        self.lookups += 1
        key_id = self._hashes.get(key_hash)
        return None if key_id is None else self._keys[key_id]

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

    async def recent(self, limit: int, scope: UsageScope | None) -> list[UsageRecord]:
        if not self.available:
            raise StoreUnavailable()
        rows = [
            r for r in reversed(self.rows) if scope is None or (r.user == scope.user and r.tier is scope.tier)
        ]
        return rows[:limit]

    async def count(self) -> int:
        if not self.available:
            raise StoreUnavailable()
        return len(self.rows)
