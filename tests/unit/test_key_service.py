"""Key management and usage reports, within what each principal may do."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from ollama_gate.adapters.memory_stores import InMemoryKeyStore, InMemoryUsageStore
from ollama_gate.domain.access import Principal, scope_user
from ollama_gate.domain.errors import Forbidden, InvalidRequest, NotFound, StoreUnavailable
from ollama_gate.domain.identity import Tier
from ollama_gate.domain.keys import InvalidCredentials, hash_secret, is_key_shaped
from ollama_gate.domain.usage import Outcome, UsageRecord
from ollama_gate.services.authenticator import Authenticator
from ollama_gate.services.keys import KeyService
from ollama_gate.services.usage_reports import UsageReports
from tests.unit.fakes import FakeClock


async def test_create_returns_the_secret_once_and_stores_only_its_hash(
    key_service: KeyService, key_store: InMemoryKeyStore, clock: FakeClock
) -> None:
    issued = await key_service.create("alice", "MyKey")
    assert is_key_shaped(issued.secret)
    key = issued.key
    assert (key.user_id, key.name, key.prefix) == ("alice", "MyKey", issued.secret[:9])
    assert key.created_at == clock.now() and key.active
    assert (await key_store.find_by_hash(hash_secret(issued.secret))) == key
    assert issued.secret not in repr(key)
    [listed] = await key_service.list("alice")
    assert issued.secret not in repr(listed)


async def test_create_defaults_the_name_and_validates(key_service: KeyService) -> None:
    assert (await key_service.create("alice", None)).key.name == "default"
    with pytest.raises(InvalidRequest, match="user_id"):
        await key_service.create("not valid!", None)
    with pytest.raises(InvalidRequest, match="name"):
        await key_service.create("alice", "x" * 101)


async def test_every_key_is_different(key_service: KeyService) -> None:
    secrets = {(await key_service.create("alice", None)).secret for _ in range(20)}
    assert len(secrets) == 20


async def test_list_is_newest_first_per_user_or_all(key_service: KeyService, clock: FakeClock) -> None:
    ids = []
    for user in ["alice", "bob", "alice"]:
        ids.append((await key_service.create(user, None)).key.id)
        clock.advance(1)
    assert [k.id for k in await key_service.list("alice")] == [ids[2], ids[0]]
    assert [k.id for k in await key_service.list("bob")] == [ids[1]]
    assert [k.id for k in await key_service.list(None)] == ids[::-1]
    assert await key_service.list("carol") == []


async def test_revoke_is_idempotent_and_keeps_the_first_time(
    key_service: KeyService, clock: FakeClock
) -> None:
    issued = await key_service.create("alice", None)
    clock.advance(5)
    first = await key_service.revoke(issued.key.id, "alice")
    assert first.revoked_at == clock.now() and not first.active
    clock.advance(5)
    again = await key_service.revoke(issued.key.id, "alice")
    assert again.revoked_at == first.revoked_at
    [listed] = await key_service.list("alice")
    assert not listed.active


@pytest.mark.parametrize(("key_id", "user_id"), [(999, None), (999, "alice"), (1, "bob")])
async def test_revoke_is_404_for_a_missing_or_foreign_key(
    key_service: KeyService, key_id: int, user_id: str | None
) -> None:
    await key_service.create("alice", None)
    with pytest.raises(NotFound, match=f"key {key_id} not found"):
        await key_service.revoke(key_id, user_id)
    assert all(k.active for k in await key_service.list("alice"))


async def test_a_revoked_key_fails_its_very_next_use(
    key_service: KeyService, authenticator: Authenticator
) -> None:
    keep = await key_service.create("alice", "keep")
    drop = await key_service.create("alice", "drop")
    await authenticator.member_key(drop.secret)
    await key_service.revoke(drop.key.id, "alice")
    with pytest.raises(InvalidCredentials, match="revoked"):
        await authenticator.member_key(drop.secret)
    assert (await authenticator.member_key(keep.secret)).id == keep.key.id


async def test_a_member_manages_only_its_own_keys(key_service: KeyService) -> None:
    """What the management endpoints do: the scope from the access rules, then the service."""
    alice = Principal.member("alice")
    bob_key = await key_service.create("bob", None)
    own = await key_service.create(scope_user(alice, None, required_for_admin=True) or "", "second")
    assert own.key.user_id == "alice"
    with pytest.raises(Forbidden):
        scope_user(alice, "bob", required_for_admin=True)
    # Naming only the key id is not enough either: it must be alice's.
    with pytest.raises(NotFound):
        await key_service.revoke(bob_key.key.id, scope_user(alice, None, required_for_admin=True))


async def test_key_operations_when_the_store_is_down(
    key_service: KeyService, key_store: InMemoryKeyStore
) -> None:
    issued = await key_service.create("alice", None)
    key_store.available = False
    with pytest.raises(StoreUnavailable, match="database unavailable"):
        await key_service.create("alice", None)
    with pytest.raises(StoreUnavailable):
        await key_service.list("alice")
    with pytest.raises(StoreUnavailable):
        await key_service.revoke(issued.key.id, "alice")


# -- Usage reports -----------------------------------------------------------------------------------


def row(user: str, n: int) -> UsageRecord:
    tier = Tier.ANONYMOUS if user == "anonymous" else Tier.MEMBER
    return UsageRecord(
        datetime(2026, 1, 1, 0, 0, n, tzinfo=UTC),
        user,
        tier,
        None if user == "anonymous" else 1,
        "10.0.0.1",
        "/chat",
        "smollm:latest",
        200,
        Outcome.OK,
        float(n),
        1,
        2,
    )


@pytest.fixture
async def reports(usage_store: InMemoryUsageStore) -> UsageReports:
    await usage_store.add_many(
        [row(user, n) for n, user in enumerate(["alice", "bob", "anonymous", "alice"])]
    )
    return UsageReports(usage_store)


def seconds(rows: list[UsageRecord]) -> list[int]:
    return [r.timestamp.second for r in rows]


async def test_admins_see_everyone_newest_first(reports: UsageReports) -> None:
    assert seconds(await reports.recent(Principal.admin(), 50, None)) == [3, 2, 1, 0]
    assert seconds(await reports.recent(Principal.admin(), 2, None)) == [3, 2]
    assert seconds(await reports.recent(Principal.admin(), 50, "alice")) == [3, 0]


async def test_members_see_only_their_own_rows(reports: UsageReports) -> None:
    assert seconds(await reports.recent(Principal.member("bob"), 50, None)) == [1]
    assert seconds(await reports.recent(Principal.member("bob"), 50, "bob")) == [1]
    with pytest.raises(Forbidden):
        await reports.recent(Principal.member("bob"), 50, "alice")
    with pytest.raises(Forbidden):
        await reports.recent(Principal.nobody(), 50, None)


@pytest.mark.parametrize("limit", [1, 1000])
async def test_limit_bounds_are_accepted(reports: UsageReports, limit: int) -> None:
    assert len(await reports.recent(Principal.admin(), limit, None)) == min(limit, 4)


@pytest.mark.parametrize("limit", [0, -1, 1001, 10**9])
async def test_limit_out_of_bounds_is_400(reports: UsageReports, limit: int) -> None:
    with pytest.raises(InvalidRequest, match="between 1 and 1000"):
        await reports.recent(Principal.admin(), limit, None)


async def test_a_bad_user_id_filter_is_400(reports: UsageReports) -> None:
    with pytest.raises(InvalidRequest, match="user_id"):
        await reports.recent(Principal.admin(), 50, "no spaces please")


@pytest.mark.parametrize("reserved", ["anonymous", "admin", "Anonymous", "ADMIN"])
async def test_the_reserved_names_cannot_become_members(key_service: KeyService, reserved: str) -> None:
    with pytest.raises(InvalidRequest, match="reserved"):
        await key_service.create(reserved, None)
    assert await key_service.list(None) == []


@pytest.mark.parametrize("key_id", [0, -1, 2**63, 2**64 + 5, 10**30])
async def test_a_key_id_no_database_can_hold_is_404_before_any_query(
    key_service: KeyService, key_id: int
) -> None:
    with pytest.raises(NotFound):
        await key_service.revoke(key_id, None)


async def test_usage_is_scoped_by_tier_as_well_as_user(usage_store: InMemoryUsageStore) -> None:
    """A member named like the anonymous callers (a key created before the name was reserved) sees its
    own rows only; the admin reads the anonymous callers' rows by their user name."""
    await usage_store.add_many(
        [
            row("anonymous", 0),  # an anonymous caller
            dataclasses.replace(row("anonymous", 1), tier=Tier.MEMBER, key_id=7),  # the old member
        ]
    )
    reports = UsageReports(usage_store)
    assert seconds(await reports.recent(Principal.member("anonymous"), 50, None)) == [1]
    assert seconds(await reports.recent(Principal.admin(), 50, "anonymous")) == [0]
