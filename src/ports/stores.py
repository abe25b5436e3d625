from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from typing import Protocol

from ollama_gate.domain.access import UsageScope
from ollama_gate.domain.keys import ApiKey
from ollama_gate.domain.usage import UsageRecord
from ollama_gate.domain.usage_query import ALL_ROWS, GroupBy, UsageFilter, UsageGroup
from ollama_gate.domain.usage_series import BucketCount, UserTotals


class KeyStore(Protocol):
    """Persistent API keys, stored by hash. Every method raises StoreUnavailable when the store is down."""

    async def add(
        self,
        user_id: str,
        name: str,
        key_hash: str,
        prefix: str,
        created_at: datetime,
        plan: str | None = None,
    ) -> ApiKey: ...

    async def find_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, revoked or not."""
        ...

    async def find_by_hashes(self, key_hashes: Sequence[str]) -> dict[str, ApiKey]:
        """The keys with these hashes, revoked or not, by hash (one query; an unknown hash is absent)."""
        ...

    async def get(self, key_id: int) -> ApiKey | None: ...

    async def list(self, user_id: str | None) -> list[ApiKey]:
        """Newest first; every user's keys when `user_id` is None."""
        ...

    async def revoke(self, key_id: int, at: datetime) -> ApiKey | None:
        """Mark revoked (keeping the first revocation time); None if no such key."""
        ...

    async def touch(self, last_used: dict[int, datetime]) -> None:
        """Record `last_used_at` for many keys in one go."""
        ...


class UsageStore(Protocol):
    """Persistent usage rows. Raises StoreUnavailable when the store is down."""

    async def add_many(self, records: Sequence[UsageRecord]) -> None:
        """Write a batch in one round trip."""
        ...

    async def recent(
        self, limit: int, scope: UsageScope | None, filters: UsageFilter = ALL_ROWS
    ) -> list[UsageRecord]:
        """Newest first (by id); only the rows of `scope` (one user of one tier) when given, and only
        those `filters` admit."""
        ...

    async def summary(
        self, scope: UsageScope | None, filters: UsageFilter, group_by: GroupBy
    ) -> list[UsageGroup]:
        """The totals per group of the rows `recent` would list, as `usage_query.summarize` computes
        them (and in its order), computed by the store itself."""
        ...

    def export(
        self, scope: UsageScope | None, filters: UsageFilter, chunk_size: int = 1000
    ) -> AsyncGenerator[list[UsageRecord], None]:
        """Every row `recent` would list, oldest first, in chunks of at most `chunk_size`: never all in
        memory at once. The first chunk raises StoreUnavailable if the store is down; closing the
        iterator early releases the store's connection."""
        ...

    async def count(self) -> int: ...


class UsageSeriesStore(Protocol):
    """Usage rows counted per time bucket, for the console's charts. Raises StoreUnavailable when down."""

    async def buckets(
        self, scope: UsageScope | None, since: datetime, until: datetime, bucket_seconds: int
    ) -> list[BucketCount]:
        """Requests and tokens (prompt + completion) per bucket of `bucket_seconds` (buckets numbered
        from the epoch, UTC) of the rows of `scope` with `since <= timestamp < until`, read through the
        timestamp index: the cost follows the range, not the table."""
        ...

    async def top_users(self, since: datetime, until: datetime, limit: int) -> list[UserTotals]:
        """The `limit` users with the most requests with `since <= timestamp < until`, most first (then
        by name)."""
        ...
