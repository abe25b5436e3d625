from __future__ import annotations

from typing import Protocol

from ollama_gate.domain.plans import Plan
from ollama_gate.domain.users import UserRecord


class PlanStore(Protocol):
    """Stored plans and the users' assigned plans. Every change bumps a revision, so each instance can
    tell cheaply that its cached copy is out of date. Raises StoreUnavailable when the store is down."""

    async def revision(self) -> int:
        """A number that changes whenever a plan or an assignment does."""
        ...

    async def plans(self) -> list[Plan]:
        """Every stored plan (a built-in appears here only once it has been edited)."""
        ...

    async def save_plan(self, plan: Plan) -> None:
        """Create or replace the plan named `plan.name`."""
        ...

    async def delete_plan(self, name: str) -> bool:
        """Delete an unused plan; False when none is stored under `name`. Raises Conflict (naming what
        uses it) while a user or an active key is on it."""
        ...

    async def assignments(self) -> dict[str, str]:
        """user id -> assigned plan, for every user with one."""
        ...

    async def assign(self, user_id: str, plan: str) -> None: ...

    async def users(self, default_plan: str) -> list[UserRecord]:
        """Every user with a key or an assigned plan (`default_plan` for the others), by user id."""
        ...
