"""Concurrent uses of a key due for re-reading share one store lookup (proposed for tests/unit/test_authenticator.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from ollama_gate.adapters.memory_stores import InMemoryKeyStore
from ollama_gate.domain.keys import ApiKey, InvalidCredentials
from ollama_gate.services.authenticator import Authenticator
from ollama_gate.services.keys import KeyService
from tests.unit.fakes import FakeClock

UNKNOWN_KEY = "oa-" + "u" * 43


class GatedKeyStore(InMemoryKeyStore):
    """A store whose lookups wait until the test opens the gate, as a real query takes time."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def find_by_hash(self, key_hash: str) -> ApiKey | None:
        await self.gate.wait()
        return await super().find_by_hash(key_hash)

    async def find_by_hashes(self, key_hashes: Sequence[str]) -> dict[str, ApiKey]:
        await self.gate.wait()
        return await super().find_by_hashes(key_hashes)


@pytest.fixture
def key_store() -> GatedKeyStore:
    return GatedKeyStore()


async def test_a_burst_on_a_stale_key_is_one_lookup(
    authenticator: Authenticator, key_service: KeyService, key_store: GatedKeyStore, clock: FakeClock
) -> None:
    issued = await key_service.create("alice", None)
    await authenticator.member_key(issued.secret)
    clock.advance(6)  # past revalidate_after: the next use re-reads the key
    key_store.gate.clear()
    burst = [asyncio.create_task(authenticator.member_key(issued.secret)) for _ in range(50)]
    await asyncio.sleep(0)
    key_store.gate.set()
    keys = await asyncio.gather(*burst)
    assert {key.user_id for key in keys} == {"alice"}
    assert key_store.lookups == 2


async def test_a_burst_of_an_unknown_key_is_one_lookup(
    authenticator: Authenticator, key_store: GatedKeyStore
) -> None:
    key_store.gate.clear()
    burst = [asyncio.create_task(authenticator.member_key(UNKNOWN_KEY)) for _ in range(20)]
    await asyncio.sleep(0)
    key_store.gate.set()
    results = await asyncio.gather(*burst, return_exceptions=True)
    assert all(isinstance(r, InvalidCredentials) for r in results)
    assert key_store.lookups == 1


async def test_a_caller_that_goes_away_does_not_cancel_the_lookup_of_the_others(
    authenticator: Authenticator, key_service: KeyService, key_store: GatedKeyStore, clock: FakeClock
) -> None:
    issued = await key_service.create("alice", None)
    key_store.gate.clear()
    leaving = asyncio.create_task(authenticator.member_key(issued.secret))
    staying = asyncio.create_task(authenticator.member_key(issued.secret))
    await asyncio.sleep(0)
    leaving.cancel()
    key_store.gate.set()
    assert (await staying).user_id == "alice"
    assert leaving.cancelled()
    assert key_store.lookups == 1
