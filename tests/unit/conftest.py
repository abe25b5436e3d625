"""Shared fixtures of the unit suite: a fake clock and the in-memory stores, wired into the services."""

from __future__ import annotations

import pytest

from ollama_gate.adapters.memory_quota import InMemoryQuotaLimiter
from ollama_gate.adapters.memory_stores import InMemoryKeyStore, InMemoryPlanStore, InMemoryUsageStore
from ollama_gate.domain.plans import Window, builtin_plans
from ollama_gate.services.authenticator import Authenticator
from ollama_gate.services.gatekeeper import Gatekeeper
from ollama_gate.services.keys import KeyService
from ollama_gate.services.plans import PlanBook
from tests.unit.fakes import FakeClock

ANONYMOUS_RATE = Window(3, 60)
MEMBER_RATE = Window(5, 60)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def key_store() -> InMemoryKeyStore:
    return InMemoryKeyStore()


@pytest.fixture
def usage_store() -> InMemoryUsageStore:
    return InMemoryUsageStore()


@pytest.fixture
def authenticator(key_store: InMemoryKeyStore, clock: FakeClock) -> Authenticator:
    return Authenticator(key_store, clock, revalidate_after=5.0, unknown_ttl=5.0)


@pytest.fixture
def key_service(key_store: InMemoryKeyStore, authenticator: Authenticator, clock: FakeClock) -> KeyService:
    return KeyService(key_store, authenticator, clock)


@pytest.fixture
def limiter(clock: FakeClock) -> InMemoryQuotaLimiter:
    return InMemoryQuotaLimiter(clock)


@pytest.fixture
def plan_store(key_store: InMemoryKeyStore) -> InMemoryPlanStore:
    return InMemoryPlanStore(key_store)


@pytest.fixture
def plans(plan_store: InMemoryPlanStore) -> PlanBook:
    return PlanBook(plan_store, builtin_plans(ANONYMOUS_RATE, MEMBER_RATE))


@pytest.fixture
def gatekeeper(authenticator: Authenticator, limiter: InMemoryQuotaLimiter, plans: PlanBook) -> Gatekeeper:
    return Gatekeeper(authenticator, limiter, plans)
