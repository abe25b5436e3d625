"""The plans in force: built-ins from the environment, stored plans and users' assignments, cached here.

An edit through this service applies to this instance's next request; other instances (and edits made
with the CLI) are seen once `refresh` finds the store's revision changed, which the app polls every half
second, so within a second everywhere.

A built-in plan's `requests` comes from the environment (OLLAMA_GATE_ANON_RATE_LIMIT,
OLLAMA_GATE_MEMBER_RATE_LIMIT) until the plan is edited: from then on the stored plan is in force, whole.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ollama_gate.domain.errors import Conflict, NotFound, StoreUnavailable
from ollama_gate.domain.keys import validate_member_id
from ollama_gate.domain.plans import (
    BUILTIN_PLANS,
    MEMBER_PLAN,
    Plan,
    plan_from_fields,
    plan_with_changes,
    validate_plan_name,
)
from ollama_gate.domain.users import UserRecord
from ollama_gate.ports.plan_store import PlanStore

log = logging.getLogger(__name__)


class PlanBook:
    def __init__(self, store: PlanStore, builtins: Mapping[str, Plan]) -> None:
        self._store = store
        self._builtins = dict(builtins)
        self._stored: dict[str, Plan] = {}
        self._assigned: dict[str, str] = {}
        self._revision: int | None = None
        self._store_down = False

    # -- reading (in process, on the hot path) -----------------------------------------------------

    def plan(self, name: str) -> Plan:
        """The plan in force under `name`; the member plan for a name that no longer exists."""
        found = self._stored.get(name) or self._builtins.get(name)
        if found is None:
            log.warning("plan %r is not defined (deleted meanwhile?): the member plan applies", name)
            return self.plan(MEMBER_PLAN)
        return found

    def exists(self, name: str) -> bool:
        return name in self._stored or name in self._builtins

    def plan_of_user(self, user_id: str) -> str:
        return self._assigned.get(user_id, MEMBER_PLAN)

    def all(self) -> list[Plan]:
        """The built-ins first (as in force), then the other stored plans by name."""
        builtins = [self.plan(name) for name in BUILTIN_PLANS]
        return builtins + [plan for name, plan in sorted(self._stored.items()) if name not in self._builtins]

    def source(self, name: str) -> str:
        """Where a plan's values come from: `stored` (edited or created), `environment` (a built-in
        as configured)."""
        return "stored" if name in self._stored else "environment"

    def get(self, name: str) -> Plan:
        if not self.exists(name):
            raise NotFound(f"plan '{name}' not found")
        return self.plan(name)

    # -- keeping the cache current ---------------------------------------------------------------

    async def refresh(self, force: bool = False) -> None:
        """Reload when the store's revision moved (or `force`); a store that is down keeps the cache."""
        try:
            revision = await self._store.revision()
            if force or revision != self._revision:
                stored = {plan.name: plan for plan in await self._store.plans()}
                assigned = await self._store.assignments()
                self._stored, self._assigned, self._revision = stored, assigned, revision
        except StoreUnavailable:
            if not self._store_down:
                log.warning("database unavailable: the cached plans stay in force until it is back")
            self._store_down = True
            return
        self._store_down = False

    async def start(self) -> None:
        await self.refresh()

    async def close(self) -> None:
        return None

    # -- changing (the admin API, the CLI) -------------------------------------------------------

    async def put(self, name: str, fields: Mapping[str, Any]) -> Plan:
        """Create or replace `name` with exactly `fields` (the others unlimited)."""
        plan = plan_from_fields(name, fields)
        await self._store.save_plan(plan)
        await self.refresh(force=True)
        return plan

    async def patch(self, name: str, fields: Mapping[str, Any]) -> Plan:
        """Change only the fields given."""
        plan = plan_with_changes(self.get(validate_plan_name(name)), fields)
        await self._store.save_plan(plan)
        await self.refresh(force=True)
        return plan

    async def delete(self, name: str) -> None:
        if name in self._builtins:
            raise Conflict(f"plan '{name}' is built in: it can be edited, not deleted")
        if not await self._store.delete_plan(name):
            raise NotFound(f"plan '{name}' not found")
        await self.refresh(force=True)

    async def assign(self, user_id: str, plan: str) -> UserRecord:
        user_id = validate_member_id(user_id)
        self.get(plan)
        await self._store.assign(user_id, plan)
        await self.refresh(force=True)
        return await self.user(user_id)

    async def users(self) -> list[UserRecord]:
        return await self._store.users(MEMBER_PLAN)

    async def user(self, user_id: str) -> UserRecord:
        found = next((user for user in await self.users() if user.user_id == user_id), None)
        if found is None:
            raise NotFound(f"user '{user_id}' not found")
        return found

    def require_plan(self, name: str | None) -> str | None:
        """`name` when it names a plan in force (404 otherwise); None passes."""
        if name is not None:
            self.get(name)
        return name
