"""Key authentication: cached, revocable at once, resilient to a store outage, last use batched."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

import pytest

from ollama_gate.adapters.memory_stores import InMemoryKeyStore
from ollama_gate.domain.errors import StoreUnavailable
from ollama_gate.domain.keys import ApiKey, InvalidCredentials
from ollama_gate.services.authenticator import Authenticator
from ollama_gate.services.keys import KeyService
from tests.unit.fakes import FakeClock

UNKNOWN_KEY = "oa-" + "u" * 43


class TouchCountingKeyStore(InMemoryKeyStore):
    def __init__(self) -> None:
        super().__init__()
        self.touches: list[dict[int, datetime]] = []

    async def touch(self, last_used: dict[int, datetime]) -> None:
        await super().touch(last_used)
        self.touches.append(dict(last_used))


@pytest.fixture
def key_store() -> TouchCountingKeyStore:
    return TouchCountingKeyStore()


async def test_a_cached_key_costs_no_store_lookup(
    authenticator: Authenticator, key_service: KeyService, key_store: InMemoryKeyStore, clock: FakeClock
) -> None:
    issued = await key_service.create("alice", None)
    for _ in range(100):
        key = await authenticator.member_key(issued.secret)
        assert key.user_id == "alice" and key.id == issued.key.id
        clock.advance(0.01)
    assert key_store.lookups == 1


async def settle() -> None:
    """Let background re-reads run (they take a few loop iterations against the in-memory store)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_key_is_reread_after_revalidate_after(
    authenticator: Authenticator, key_service: KeyService, key_store: InMemoryKeyStore, clock: FakeClock
) -> None:
    issued = await key_service.create("alice", None)
    await authenticator.member_key(issued.secret)
    clock.advance(4.9)
    await authenticator.member_key(issued.secret)
    await settle()
    assert key_store.lookups == 1
    clock.advance(0.2)
    await authenticator.member_key(issued.secret)
    await settle()
    assert key_store.lookups == 2
    await authenticator.member_key(issued.secret)
    await settle()
    assert key_store.lookups == 2  # fresh again


async def test_keys_that_fall_due_together_are_reread_in_one_lookup(
    authenticator: Authenticator, key_service: KeyService, key_store: InMemoryKeyStore, clock: FakeClock
) -> None:
    issued = [await key_service.create(f"user-{n}", None) for n in range(100)]
    for key in issued:
        await authenticator.member_key(key.secret)
    assert key_store.lookups == 100
    clock.advance(6)
    for key in issued:  # a burst that uses every key again, all due
        await authenticator.member_key(key.secret)
    await settle()
    assert key_store.lookups == 101
    revoked = await key_store.revoke(issued[7].key.id, datetime.now())  # elsewhere: the CLI, another instance
    assert revoked is not None
    clock.advance(6)
    for key in issued:
        await authenticator.member_key(key.secret)  # still served from the cache, re-read behind it
    await settle()
    assert key_store.lookups == 102
    with pytest.raises(InvalidCredentials):
        await authenticator.member_key(issued[7].secret)
    assert (await authenticator.member_key(issued[8].secret)).user_id == "user-8"


class StalledKeyStore(InMemoryKeyStore):
    """A database whose TCP connection is open but sends nothing: lookups never answer."""

    stalled = False

    async def find_by_hash(self, key_hash: str) -> ApiKey | None:
        if self.stalled:
            await asyncio.sleep(3600)
        return await super().find_by_hash(key_hash)

    async def find_by_hashes(self, key_hashes: Sequence[str]) -> dict[str, ApiKey]:
        if self.stalled:
            await asyncio.sleep(3600)
        return await super().find_by_hashes(key_hashes)


async def test_a_stalled_store_never_delays_a_cached_key_and_an_unknown_one_gets_503_in_time(
    clock: FakeClock,
) -> None:
    store = StalledKeyStore()
    authenticator = Authenticator(store, clock, revalidate_after=5.0, lookup_timeout=0.05)
    service = KeyService(store, authenticator, clock)
    cached, uncached = await service.create("alice", None), await service.create("bob", None)
    await authenticator.member_key(cached.secret)
    store.stalled = True
    clock.advance(60)  # well past its revalidation: the re-read hangs behind the answer, not before it
    answer = asyncio.create_task(authenticator.member_key(cached.secret))
    await settle()
    assert answer.done() and answer.result().user_id == "alice"
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(authenticator.member_key(uncached.secret), 1.0)  # 503 after 0.05 s


async def test_a_revocation_through_the_service_takes_effect_on_the_next_call(
    authenticator: Authenticator, key_service: KeyService, key_store: InMemoryKeyStore
) -> None:
    issued = await key_service.create("alice", None)
    await authenticator.member_key(issued.secret)
    await key_service.revoke(issued.key.id, "alice")
    with pytest.raises(InvalidCredentials, match="revoked"):
        await authenticator.member_key(issued.secret)
    assert key_store.lookups == 1  # no store round trip was needed to learn it


async def test_key_revoked_alone_updates_the_cache(
    authenticator: Authenticator, key_service: KeyService, key_store: InMemoryKeyStore, clock: FakeClock
) -> None:
    issued = await key_service.create("alice", None)
    await authenticator.member_key(issued.secret)
    revoked = await key_store.revoke(issued.key.id, clock.now())
    assert revoked is not None
    authenticator.key_revoked(revoked)
    with pytest.raises(InvalidCredentials):
        await authenticator.member_key(issued.secret)


async def test_a_revocation_made_elsewhere_is_seen_after_revalidate_after(
    authenticator: Authenticator, key_service: KeyService, key_store: InMemoryKeyStore, clock: FakeClock
) -> None:
    """The CLI or another instance revoked the key in the database: bounded staleness, then 401."""
    issued = await key_service.create("alice", None)
    await authenticator.member_key(issued.secret)
    await key_store.revoke(issued.key.id, clock.now())
    clock.advance(1)
    await authenticator.member_key(issued.secret)  # still cached
    clock.advance(5)
    await authenticator.member_key(issued.secret)  # due: served, and re-read behind the answer
    await settle()
    with pytest.raises(InvalidCredentials, match="revoked"):
        await authenticator.member_key(issued.secret)


async def test_forget_makes_the_next_use_reload(
    authenticator: Authenticator, key_service: KeyService, key_store: InMemoryKeyStore, clock: FakeClock
) -> None:
    issued = await key_service.create("alice", None)
    await authenticator.member_key(issued.secret)
    await key_store.revoke(issued.key.id, clock.now())
    authenticator.forget(issued.key.id)
    with pytest.raises(InvalidCredentials):
        await authenticator.member_key(issued.secret)


async def test_unknown_keys_are_remembered_briefly(
    authenticator: Authenticator, key_store: InMemoryKeyStore, clock: FakeClock
) -> None:
    for _ in range(50):
        with pytest.raises(InvalidCredentials, match="unknown"):
            await authenticator.member_key(UNKNOWN_KEY)
    assert key_store.lookups == 1
    clock.advance(5.1)
    with pytest.raises(InvalidCredentials, match="unknown"):
        await authenticator.member_key(UNKNOWN_KEY)
    assert key_store.lookups == 2


async def test_a_key_created_after_a_failed_attempt_works_at_once(
    authenticator: Authenticator,
    key_store: InMemoryKeyStore,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Someone tried a key before it existed; creating it must not leave it 'unknown' for a while."""
    secret = "oa-" + "n" * 43
    with pytest.raises(InvalidCredentials):
        await authenticator.member_key(secret)
    monkeypatch.setattr("ollama_gate.services.keys.generate_secret", lambda: secret)
    service = KeyService(key_store, authenticator, clock)
    await service.create("alice", None)
    assert (await authenticator.member_key(secret)).user_id == "alice"


async def test_store_down_on_a_cache_miss_is_store_unavailable(
    authenticator: Authenticator, key_service: KeyService, key_store: InMemoryKeyStore
) -> None:
    issued = await key_service.create("alice", None)
    key_store.available = False
    with pytest.raises(StoreUnavailable):
        await authenticator.member_key(issued.secret)
    with pytest.raises(StoreUnavailable):
        await authenticator.member_key(UNKNOWN_KEY)
    key_store.available = True
    assert (await authenticator.member_key(issued.secret)).user_id == "alice"


async def test_a_cached_key_keeps_working_while_the_store_is_down(
    authenticator: Authenticator, key_service: KeyService, key_store: InMemoryKeyStore, clock: FakeClock
) -> None:
    issued = await key_service.create("alice", None)
    await authenticator.member_key(issued.secret)
    key_store.available = False
    for _ in range(3):
        clock.advance(10)  # well past revalidate_after: the reload fails, the cached entry serves
        assert (await authenticator.member_key(issued.secret)).user_id == "alice"


async def test_last_used_is_written_in_one_batch_not_per_request(
    authenticator: Authenticator, key_service: KeyService, key_store: TouchCountingKeyStore, clock: FakeClock
) -> None:
    alice = await key_service.create("alice", None)
    bob = await key_service.create("bob", None)
    for _ in range(10):
        clock.advance(1)
        await authenticator.member_key(alice.secret)
    alice_last_use = clock.now()
    clock.advance(1)
    await authenticator.member_key(bob.secret)
    assert key_store.touches == []
    assert await last_used(key_store, alice.key.id) is None
    await authenticator.flush_last_used()
    assert key_store.touches == [{alice.key.id: alice_last_use, bob.key.id: clock.now()}]
    assert await last_used(key_store, alice.key.id) == alice_last_use
    await authenticator.flush_last_used()
    assert len(key_store.touches) == 1  # nothing new, nothing written


async def test_last_used_survives_an_outage(
    authenticator: Authenticator, key_service: KeyService, key_store: TouchCountingKeyStore, clock: FakeClock
) -> None:
    alice = await key_service.create("alice", None)
    bob = await key_service.create("bob", None)
    await authenticator.member_key(alice.secret)
    await authenticator.member_key(bob.secret)
    first_use = clock.now()
    key_store.available = False
    await authenticator.flush_last_used()  # fails quietly: the times are kept
    clock.advance(3)
    await authenticator.member_key(alice.secret)  # served from the cache during the outage
    key_store.available = True
    await authenticator.flush_last_used()
    assert await last_used(key_store, alice.key.id) == clock.now()  # the newer use wins
    assert await last_used(key_store, bob.key.id) == first_use


async def last_used(store: InMemoryKeyStore, key_id: int) -> datetime | None:
    key = await store.get(key_id)
    assert key is not None
    return key.last_used_at


class FailingOnceKeyStore(InMemoryKeyStore):
    """A store whose many-keys query fails once in a way nobody foresaw."""

    failures = 1

    async def find_by_hashes(self, key_hashes: Sequence[str]) -> dict[str, ApiKey]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("a driver bug")
        return await super().find_by_hashes(key_hashes)


async def test_a_reread_that_fails_unexpectedly_keeps_serving_and_retries_at_the_next_revalidation(
    clock: FakeClock,
) -> None:
    store = FailingOnceKeyStore()
    authenticator = Authenticator(store, clock, revalidate_after=5.0)
    service = KeyService(store, authenticator, clock)
    issued = await service.create("alice", None)
    await authenticator.member_key(issued.secret)
    clock.advance(6)
    assert (await authenticator.member_key(issued.secret)).user_id == "alice"  # re-read fails behind it
    await settle()
    await store.revoke(issued.key.id, datetime.now())
    clock.advance(6)
    await authenticator.member_key(issued.secret)  # served; this re-read succeeds and sees the revocation
    await settle()
    with pytest.raises(InvalidCredentials):
        await authenticator.member_key(issued.secret)
