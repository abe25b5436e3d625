"""PlanStore on SQLAlchemy Core: plans, users' assigned plans, and the revision instances poll."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ollama_gate.adapters.sql.database import Database
from ollama_gate.adapters.sql.tables import api_keys, config_revision, plans, user_plans
from ollama_gate.domain.errors import Conflict
from ollama_gate.domain.plans import Plan, Window, plan_in_use
from ollama_gate.domain.users import UserRecord


def _row(plan: Plan) -> dict[str, Any]:
    return {
        "name": plan.name,
        "requests": plan.requests.text if plan.requests else None,
        "tokens": plan.tokens.text if plan.tokens else None,
        "daily_tokens": plan.daily_tokens,
        "concurrency": plan.concurrency,
        "models": json.dumps(list(plan.models)) if plan.models is not None else None,
        "max_context": plan.max_context,
        "max_output": plan.max_output,
        "max_keep_alive": plan.max_keep_alive,
        "priority": plan.priority,
        "weight": plan.weight,
        "queue_timeout": plan.queue_timeout,
        "updated_at": datetime.now(UTC),
    }


def _plan(row: Any) -> Plan:
    return Plan(
        name=row.name,
        requests=Window.parse(row.requests) if row.requests else None,
        tokens=Window.parse(row.tokens) if row.tokens else None,
        daily_tokens=row.daily_tokens,
        concurrency=row.concurrency,
        models=tuple(json.loads(row.models)) if row.models is not None else None,
        max_context=row.max_context,
        max_output=row.max_output,
        max_keep_alive=row.max_keep_alive,
        priority=row.priority,
        weight=row.weight,
        queue_timeout=row.queue_timeout,
    )


async def _bump(connection: AsyncConnection) -> None:
    await connection.execute(
        update(config_revision)
        .where(config_revision.c.id == 1)
        .values(revision=config_revision.c.revision + 1)
    )


class SqlPlanStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def revision(self) -> int:
        async with self._db.transaction() as connection:
            result = await connection.execute(
                select(config_revision.c.revision).where(config_revision.c.id == 1)
            )
            return int(result.scalar_one_or_none() or 0)

    async def plans(self) -> list[Plan]:
        async with self._db.transaction() as connection:
            result = await connection.execute(select(plans).order_by(plans.c.name))
            return [_plan(row) for row in result]

    async def save_plan(self, plan: Plan) -> None:
        row = _row(plan)
        async with self._db.transaction() as connection:
            changed = await connection.execute(update(plans).where(plans.c.name == plan.name).values(**row))
            if not changed.rowcount:
                await connection.execute(insert(plans).values(**row))
            await _bump(connection)

    async def delete_plan(self, name: str) -> bool:
        async with self._db.transaction() as connection:
            if (await connection.execute(select(plans.c.name).where(plans.c.name == name))).first() is None:
                return False
            users = (
                await connection.execute(
                    select(func.count()).select_from(user_plans).where(user_plans.c.plan == name)
                )
            ).scalar_one()
            keys = (
                await connection.execute(
                    select(func.count())
                    .select_from(api_keys)
                    .where(api_keys.c.plan == name, api_keys.c.revoked_at.is_(None))
                )
            ).scalar_one()
            if users or keys:
                raise Conflict(plan_in_use(name, int(users), int(keys)))
            await connection.execute(delete(plans).where(plans.c.name == name))
            await _bump(connection)
        return True

    async def assignments(self) -> dict[str, str]:
        async with self._db.transaction() as connection:
            result = await connection.execute(select(user_plans.c.user_id, user_plans.c.plan))
            return {row.user_id: row.plan for row in result}

    async def assign(self, user_id: str, plan: str) -> None:
        values = {"plan": plan, "updated_at": datetime.now(UTC)}
        async with self._db.transaction() as connection:
            changed = await connection.execute(
                update(user_plans).where(user_plans.c.user_id == user_id).values(**values)
            )
            if not changed.rowcount:
                await connection.execute(insert(user_plans).values(user_id=user_id, **values))
            await _bump(connection)

    async def users(self, default_plan: str) -> list[UserRecord]:
        active = func.count(api_keys.c.id).filter(api_keys.c.revoked_at.is_(None))
        async with self._db.transaction() as connection:
            key_counts = {
                row.user_id: int(row.keys)
                for row in await connection.execute(
                    select(api_keys.c.user_id, active.label("keys")).group_by(api_keys.c.user_id)
                )
            }
            assigned = {
                row.user_id: row.plan
                for row in await connection.execute(select(user_plans.c.user_id, user_plans.c.plan))
            }
        return [
            UserRecord(user_id, assigned.get(user_id, default_plan), key_counts.get(user_id, 0))
            for user_id in sorted(key_counts.keys() | assigned.keys())
        ]
