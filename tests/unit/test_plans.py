"""Plans as an admin writes them, and the plan book that keeps them in force."""

from __future__ import annotations

from typing import Any

import pytest

from ollama_gate.adapters.memory_stores import InMemoryPlanStore
from ollama_gate.domain.errors import Conflict, InvalidRequest, NotFound, StoreUnavailable
from ollama_gate.domain.plans import Plan, Window, plan_from_fields, plan_with_changes
from ollama_gate.services.keys import KeyService
from ollama_gate.services.plans import PlanBook
from tests.unit.conftest import ANONYMOUS_RATE, MEMBER_RATE

GOLD = {
    "requests": "60/60",
    "tokens": "20000/60",
    "daily_tokens": 500000,
    "concurrency": 4,
    "models": ["llama3.2:*", "smollm:latest"],
    "max_context": 8192,
    "max_output": 1024,
    "max_keep_alive": "10m",
    "priority": 1,
    "weight": 2,
    "queue_timeout": 30,
}


def test_a_plan_from_every_field() -> None:
    plan = plan_from_fields("gold", GOLD)
    assert plan == Plan(
        "gold",
        requests=Window(60, 60),
        tokens=Window(20000, 60),
        daily_tokens=500000,
        concurrency=4,
        models=("llama3.2:*", "smollm:latest"),
        max_context=8192,
        max_output=1024,
        max_keep_alive=600.0,
        priority=1,
        weight=2.0,
        queue_timeout=30.0,
    )
    assert plan.fields() == {
        "name": "gold",
        **GOLD,
        "max_keep_alive": 600.0,
        "weight": 2.0,
        "queue_timeout": 30.0,
    }


def test_absent_or_null_means_no_limit() -> None:
    plan = plan_from_fields("free", {"requests": "5/60", "tokens": None})
    assert plan.fields() == {"name": "free", "requests": "5/60"} | dict.fromkeys(
        [f for f in GOLD if f != "requests"], None
    )


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"requests": "often"}, "requests"),
        ({"requests": 30}, "requests"),
        ({"tokens": "0/60"}, "tokens"),
        ({"daily_tokens": -5}, "daily_tokens"),
        ({"daily_tokens": 1.5}, "daily_tokens"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"models": "llama3.2:*"}, "models"),
        ({"models": [""]}, "models"),
        ({"max_context": "big"}, "max_context"),
        ({"max_output": 0}, "max_output"),
        ({"max_keep_alive": "-1"}, "max_keep_alive"),
        ({"max_keep_alive": "soon"}, "max_keep_alive"),
        ({"priority": 1.5}, "priority"),
        ({"priority": 10**6}, "priority"),
        ({"weight": 0}, "weight"),
        ({"weight": "heavy"}, "weight"),
        ({"queue_timeout": -1}, "queue_timeout"),
        ({"request": "5/60"}, "request"),  # a typo is refused, not silently a plan without the limit
    ],
)
def test_an_invalid_field_is_400_naming_it(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        plan_from_fields("p", fields)
    assert raised.value.detail.startswith(f"{named}:")


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "ü", "a/b"])
def test_a_plan_name_is_short_and_plain(name: str) -> None:
    with pytest.raises(InvalidRequest, match="plan name"):
        plan_from_fields(name, {})


def test_a_patch_changes_only_what_it_names() -> None:
    plan = plan_with_changes(plan_from_fields("gold", GOLD), {"tokens": None, "concurrency": 8})
    assert (plan.tokens, plan.concurrency, plan.requests) == (None, 8, Window(60, 60))


@pytest.mark.parametrize(
    ("patterns", "model", "allowed"),
    [
        (None, "anything:7b", True),
        (["llama3.2:*"], "llama3.2:1b", True),
        (["llama3.2:*"], "Llama3.2:3B", True),
        (["llama3.2:*"], "llama3.1:8b", False),
        (["smollm"], "smollm:latest", True),
        (["smollm:latest"], "smollm", True),
        (["smollm:latest"], "smollm:135m", False),
        (["hf.co/org/*"], "hf.co/org/model:q4", True),
        ([], "smollm:latest", False),
    ],
)
def test_models_are_globs_matched_as_ollama_names_models(
    patterns: list[str] | None, model: str, allowed: bool
) -> None:
    plan = Plan("p", models=None if patterns is None else tuple(patterns))
    assert plan.allows_model(model) is allowed


# -- the plan book -------------------------------------------------------------------------------------


async def test_the_built_ins_are_in_force_as_the_environment_says(plans: PlanBook) -> None:
    await plans.refresh()
    assert [p.name for p in plans.all()] == ["anonymous", "member", "admin"]
    assert plans.plan("anonymous").requests == ANONYMOUS_RATE and plans.source("anonymous") == "environment"
    assert plans.plan("member").requests == MEMBER_RATE
    assert plans.plan("admin").requests is None


async def test_an_edited_built_in_is_the_stored_plan_whole(plans: PlanBook) -> None:
    await plans.patch("member", {"tokens": "1000/60"})
    member = plans.plan("member")
    assert (member.requests, member.tokens) == (MEMBER_RATE, Window(1000, 60))
    assert plans.source("member") == "stored"
    await plans.put("member", {"requests": "2/60"})
    assert (plans.plan("member").requests, plans.plan("member").tokens) == (Window(2, 60), None)


async def test_plans_are_created_listed_and_deleted(plans: PlanBook) -> None:
    await plans.put("gold", GOLD)
    await plans.put("bronze", {"requests": "5/60"})
    assert [p.name for p in plans.all()] == ["anonymous", "member", "admin", "bronze", "gold"]
    await plans.delete("bronze")
    with pytest.raises(NotFound):
        plans.get("bronze")
    with pytest.raises(NotFound):
        await plans.delete("bronze")
    with pytest.raises(NotFound):
        await plans.patch("bronze", {"requests": "1/60"})


@pytest.mark.parametrize("builtin", ["anonymous", "member", "admin"])
async def test_a_built_in_cannot_be_deleted(plans: PlanBook, builtin: str) -> None:
    with pytest.raises(Conflict, match="built in"):
        await plans.delete(builtin)


async def test_a_plan_in_use_cannot_be_deleted(plans: PlanBook, key_service: KeyService) -> None:
    await plans.put("gold", {})
    await plans.put("bot", {})
    await plans.assign("alice", "gold")
    bot_key = await key_service.create("bob", None, plan="bot")
    with pytest.raises(Conflict, match="in use by 1 user"):
        await plans.delete("gold")
    with pytest.raises(Conflict, match="in use by 1 key"):
        await plans.delete("bot")
    await key_service.revoke(bot_key.key.id, None)
    await plans.delete("bot")  # a revoked key no longer holds it


async def test_users_are_those_with_a_key_or_a_plan(plans: PlanBook, key_service: KeyService) -> None:
    await plans.put("gold", {})
    await key_service.create("bob", None)
    await key_service.create("bob", None)
    assigned = await plans.assign("alice", "gold")
    assert (assigned.user_id, assigned.plan, assigned.keys) == ("alice", "gold", 0)
    assert [(u.user_id, u.plan, u.keys) for u in await plans.users()] == [
        ("alice", "gold", 0),
        ("bob", "member", 2),
    ]
    assert plans.plan_of_user("alice") == "gold" and plans.plan_of_user("carol") == "member"
    with pytest.raises(NotFound):
        await plans.assign("carol", "platinum")
    with pytest.raises(InvalidRequest, match="reserved"):
        await plans.assign("anonymous", "gold")


async def test_a_change_made_elsewhere_is_seen_on_refresh(
    plans: PlanBook, plan_store: InMemoryPlanStore
) -> None:
    """Another instance, or the CLI, wrote to the store: the revision moved, the next refresh reloads."""
    await plans.refresh()
    other = PlanBook(plan_store, {})
    await other.put("gold", {"requests": "7/60"})
    assert not plans.exists("gold")
    await plans.refresh()
    assert plans.plan("gold").requests == Window(7, 60)


async def test_the_cached_plans_stay_in_force_while_the_store_is_down(
    plans: PlanBook, plan_store: InMemoryPlanStore
) -> None:
    await plans.put("gold", {"requests": "7/60"})
    plan_store.available = False
    await plans.refresh()
    assert plans.plan("gold").requests == Window(7, 60)
    with pytest.raises(StoreUnavailable):
        await plans.put("silver", {})
