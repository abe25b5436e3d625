"""Reading usage rows, within what the principal may see."""

from __future__ import annotations

from ollama_gate.domain.access import Principal, usage_scope
from ollama_gate.domain.errors import InvalidRequest
from ollama_gate.domain.usage import UsageRecord
from ollama_gate.ports.stores import UsageStore

MAX_USAGE_LIMIT = 1000


class UsageReports:
    def __init__(self, store: UsageStore) -> None:
        self._store = store

    async def recent(self, principal: Principal, limit: int, user_id: str | None) -> list[UsageRecord]:
        """Newest first. Admins see everyone (optionally one user); members see only their own rows, of
        their own tier: a member that shares a name with the anonymous callers never sees theirs."""
        if not 1 <= limit <= MAX_USAGE_LIMIT:
            raise InvalidRequest(f"limit must be between 1 and {MAX_USAGE_LIMIT}")
        return await self._store.recent(limit, usage_scope(principal, user_id))
