"""Reading usage rows, within what the principal may see: pages, summaries, exports."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator

from ollama_gate.domain.access import Principal, usage_scope
from ollama_gate.domain.errors import InvalidRequest
from ollama_gate.domain.immutable import immutable
from ollama_gate.domain.usage import UsageRecord
from ollama_gate.domain.usage_query import ALL_ROWS, GroupBy, UsageFilter, UsageGroup
from ollama_gate.ports.stores import UsageStore

MAX_USAGE_LIMIT = 1000


@immutable
class UsagePage:
    """One page of rows, newest first; `next_cursor` is where the next page starts (None: no more)."""

    records: list[UsageRecord]
    next_cursor: int | None


class UsageReports:
    """Every read is scoped by `usage_scope`: admins see everyone (optionally one user); members see only
    their own rows, of their own tier, so a member that shares a name with the anonymous callers never
    sees theirs."""

    def __init__(self, store: UsageStore) -> None:
        self._store = store

    async def recent(
        self, principal: Principal, limit: int, user_id: str | None, filters: UsageFilter = ALL_ROWS
    ) -> list[UsageRecord]:
        """Newest first."""
        return (await self.page(principal, limit, user_id, filters)).records

    async def page(
        self, principal: Principal, limit: int, user_id: str | None, filters: UsageFilter = ALL_ROWS
    ) -> UsagePage:
        """Up to `limit` rows older than `filters.before_id` (the cursor), and the next page's cursor."""
        if not 1 <= limit <= MAX_USAGE_LIMIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_USAGE_LIMIT}")
        scope = usage_scope(principal, user_id)
        # One row more than asked: whether another page exists, without a page that turns out empty.
        rows = await self._store.recent(limit + 1, scope, filters)
        if len(rows) <= limit:
            return UsagePage(rows, None)
        page = rows[:limit]
        return UsagePage(page, page[-1].id)

    async def summary(
        self, principal: Principal, user_id: str | None, filters: UsageFilter, group_by: GroupBy
    ) -> list[UsageGroup]:
        """Totals per group of the rows the principal may read."""
        return await self._store.summary(usage_scope(principal, user_id), self._no_cursor(filters), group_by)

    def export(
        self, principal: Principal, user_id: str | None, filters: UsageFilter, chunk_size: int = 1000
    ) -> AsyncGenerator[list[UsageRecord], None]:
        """Every row the principal may read, oldest first, in chunks. The access rules are applied here,
        at once (Forbidden before anything is streamed); the rows come as the iterator is read."""
        return self._store.export(usage_scope(principal, user_id), self._no_cursor(filters), chunk_size)

    @staticmethod
    def _no_cursor(filters: UsageFilter) -> UsageFilter:
        # Summaries and exports are whole: a page cursor does not apply to them.
        return dataclasses.replace(filters, before_id=None) if filters.before_id is not None else filters
