"""The status document: its shape, uptime, the cached Ollama probe, and usage totals."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from ollama_gate.adapters.memory_stores import InMemoryUsageStore
from ollama_gate.domain.identity import Caller, Tier
from ollama_gate.domain.keys import InvalidCredentials
from ollama_gate.domain.quota import QuotaExceeded
from ollama_gate.domain.status import ModelInfo, humanize_uptime
from ollama_gate.domain.usage import Outcome, UsageRecord
from ollama_gate.ports.llm import UpstreamState
from ollama_gate.services.gatekeeper import Gatekeeper
from ollama_gate.services.status import StatusService
from ollama_gate.services.usage_recorder import UsageRecorder
from tests.unit.fakes import FakeClock, FakeLLM, FakeMetrics

# The fields the issue promises (more may be added, none removed).
PROMISED: dict[str, dict[str, type | tuple[type, ...]]] = {
    "server": {"uptime_seconds": int, "uptime_human": str},
    "system": {"ram_total_gb": float, "ram_used_gb": float, "ram_percent": float, "cpu_percent": float},
    "ollama": {"online": bool, "models": list},
    "usage": {
        "total_requests": int,
        "active_anonymous_ips": int,
        "anon_rate_limit": str,
        "member_rate_limit": str,
        "rejected_unauthorized": int,
        "rejected_rate_limited": int,
    },
}


class HangingLLM(FakeLLM):
    async def models(self, timeout: float) -> list[ModelInfo]:
        self.model_calls += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def usage_row() -> UsageRecord:
    return UsageRecord(
        datetime(2026, 1, 1, tzinfo=UTC),
        "anonymous",
        Tier.ANONYMOUS,
        None,
        "10.0.0.1",
        "/chat",
        "smollm:latest",
        200,
        Outcome.OK,
        1.0,
        None,
        None,
    )


@pytest.fixture
def llm() -> FakeLLM:
    return FakeLLM()


@pytest.fixture
def recorder(usage_store: InMemoryUsageStore, clock: FakeClock) -> UsageRecorder:
    return UsageRecorder(usage_store, clock)


@pytest.fixture
def status_service(
    llm: FakeLLM,
    usage_store: InMemoryUsageStore,
    recorder: UsageRecorder,
    gatekeeper: Gatekeeper,
    clock: FakeClock,
) -> StatusService:
    return StatusService(
        llm, FakeMetrics(), usage_store, recorder, gatekeeper, clock, probe_timeout=0.01, probe_ttl=2.0
    )


async def test_the_document_has_every_promised_field(status_service: StatusService) -> None:
    document = await status_service.status()
    assert set(PROMISED) <= set(document)
    for section, fields in PROMISED.items():
        assert set(fields) <= set(document[section]), section
        for name, kind in fields.items():
            assert isinstance(document[section][name], kind), (section, name)
    assert document["system"] == {
        "ram_total_gb": 8.0,
        "ram_used_gb": 5.2,
        "ram_percent": 65.0,
        "cpu_percent": 12.5,
    }
    assert document["ollama"] == {"online": True, "models": [{"name": "smollm:latest", "size_gb": 0.99}]}
    usage = document["usage"]
    assert usage["anon_rate_limit"] == "3 req / 60s"
    assert usage["member_rate_limit"] == "5 req / 60s"
    assert (usage["total_requests"], usage["active_anonymous_ips"]) == (0, 0)


async def test_uptime_counts_from_the_start(status_service: StatusService, clock: FakeClock) -> None:
    clock.advance(3600.7)
    server = (await status_service.status())["server"]
    assert server == {"uptime_seconds": 3600, "uptime_human": "1h 0m"}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0m"),
        (59.9, "0m"),
        (61, "1m"),
        (3599, "59m"),
        (3600, "1h 0m"),
        (3660, "1h 1m"),
        (86_399, "23h 59m"),
        (86_400, "1d 0h 0m"),
        (90_061, "1d 1h 1m"),
        (10 * 86_400 + 120, "10d 0h 2m"),
    ],
)
def test_uptime_human(seconds: float, text: str) -> None:
    assert humanize_uptime(seconds) == text


@pytest.mark.parametrize(
    ("size", "gb"),
    [
        (990_000_000, 0.99),
        (1_320_000_000, 1.32),
        (1_234_567_890, 1.23),
        (1_235_000_001, 1.24),
        (4_999_999_999, 5.0),
        (0, 0.0),
        (4_000_000, 0.0),
        (5_000_001, 0.01),
        (274_877_906_944, 274.88),
    ],
)
async def test_model_sizes_are_gigabytes_with_two_decimals(
    status_service: StatusService, llm: FakeLLM, size: int, gb: float
) -> None:
    llm.models_list = [ModelInfo("m", size)]
    assert (await status_service.status())["ollama"]["models"] == [{"name": "m", "size_gb": gb}]


async def test_the_probe_is_cached_and_shared(
    status_service: StatusService, llm: FakeLLM, clock: FakeClock
) -> None:
    documents = await asyncio.gather(*(status_service.status() for _ in range(50)))
    assert all(d["ollama"]["online"] for d in documents)
    assert llm.model_calls == 1
    clock.advance(1.9)
    await status_service.status()
    assert llm.model_calls == 1
    clock.advance(0.2)
    await status_service.status()
    assert llm.model_calls == 2


async def test_ollama_offline(status_service: StatusService, llm: FakeLLM, clock: FakeClock) -> None:
    llm.online = False
    assert (await status_service.status())["ollama"] == {"online": False, "models": []}
    llm.online = True
    clock.advance(2.1)  # back once the cached answer expires
    assert (await status_service.status())["ollama"]["online"] is True


async def test_a_hanging_ollama_is_offline_and_shared(
    usage_store: InMemoryUsageStore, recorder: UsageRecorder, gatekeeper: Gatekeeper, clock: FakeClock
) -> None:
    llm = HangingLLM()
    service = StatusService(llm, FakeMetrics(), usage_store, recorder, gatekeeper, clock, probe_timeout=0.01)
    documents = await asyncio.gather(*(service.status() for _ in range(20)))
    assert all(d["ollama"] == {"online": False, "models": []} for d in documents)
    assert llm.model_calls == 1


async def test_total_requests_is_stored_plus_unsaved(
    status_service: StatusService, usage_store: InMemoryUsageStore, recorder: UsageRecorder
) -> None:
    for _ in range(3):
        recorder.record(usage_row())
    assert await recorder.flush()
    for _ in range(2):
        recorder.record(usage_row())
    assert (await status_service.status())["usage"]["total_requests"] == 5
    assert len(usage_store.rows) == 3


class SlowCountStore(InMemoryUsageStore):
    """Its count reads the rows, then takes a while to answer, when `held` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.held: asyncio.Event | None = None
        self.counting = asyncio.Event()

    async def count(self) -> int:
        seen = len(self.rows)
        if self.held is not None:
            self.counting.set()
            await self.held.wait()
            self.held = None
        return seen


class SlowWriteStore(InMemoryUsageStore):
    """Its rows are in (and counted) before add_many returns, when `held` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.held: asyncio.Event | None = None
        self.stored = asyncio.Event()

    async def add_many(self, records: Sequence[UsageRecord]) -> None:
        await super().add_many(records)
        if self.held is not None:
            self.stored.set()
            await self.held.wait()


def three_rows_recorded(store: InMemoryUsageStore) -> UsageRecorder:
    recorder = UsageRecorder(store, FakeClock())
    for _ in range(3):
        recorder.record(usage_row())
    return recorder


def status_of(store: InMemoryUsageStore, recorder: UsageRecorder, gatekeeper: Gatekeeper) -> StatusService:
    return StatusService(
        FakeLLM(), FakeMetrics(), store, recorder, gatekeeper, FakeClock(), probe_timeout=0.01
    )


async def test_a_batch_written_while_the_store_is_counted_is_counted_once(gatekeeper: Gatekeeper) -> None:
    store = SlowCountStore()
    recorder = three_rows_recorded(store)
    store.held = asyncio.Event()
    document = asyncio.create_task(status_of(store, recorder, gatekeeper).status())
    await store.counting.wait()  # the count has seen no row yet
    flushing = asyncio.create_task(recorder.flush())  # the three would land now
    await asyncio.sleep(0.01)
    store.held.set()
    assert (await document)["usage"]["total_requests"] == 3
    assert await flushing
    assert len(store.rows) == 3


async def test_a_batch_in_the_store_before_its_write_returns_is_counted_once(gatekeeper: Gatekeeper) -> None:
    store = SlowWriteStore()
    recorder = three_rows_recorded(store)
    store.held = asyncio.Event()
    flushing = asyncio.create_task(recorder.flush())
    await store.stored.wait()  # in the store, and still unsaved to the recorder
    document = asyncio.create_task(status_of(store, recorder, gatekeeper).status())
    await asyncio.sleep(0.01)
    store.held.set()
    assert await flushing
    assert (await document)["usage"]["total_requests"] == 3


async def test_total_requests_while_the_store_is_down(
    status_service: StatusService, usage_store: InMemoryUsageStore, recorder: UsageRecorder
) -> None:
    for _ in range(3):
        recorder.record(usage_row())
    assert await recorder.flush()
    usage_store.available = False
    recorder.record(usage_row())
    document = await status_service.status()  # still answers
    assert document["usage"]["total_requests"] == 4  # every row recorded since start
    assert document["server"]["uptime_seconds"] == 0


async def test_rejections_and_active_addresses_are_reported(
    status_service: StatusService, gatekeeper: Gatekeeper
) -> None:
    for n in range(2):
        await gatekeeper.admit(Caller.anonymous(f"10.0.0.{n}"))
    await gatekeeper.admit(Caller.member("alice", 1, "10.0.0.9"))
    for _ in range(5):
        with pytest.raises(QuotaExceeded):
            await admit_many(gatekeeper, Caller.anonymous("10.0.0.0"))
    with pytest.raises(InvalidCredentials):
        await gatekeeper.identify("nope", None, "10.0.0.5")
    usage: dict[str, Any] = (await status_service.status())["usage"]
    assert usage["active_anonymous_ips"] == 2
    assert usage["rejected_rate_limited"] == 5
    assert usage["rejected_unauthorized"] == 1


async def admit_many(gatekeeper: Gatekeeper, caller: Caller) -> None:
    """Admit until the quota says no (at most a few hundred attempts)."""
    for _ in range(300):
        await gatekeeper.admit(caller)


class InventoryLLM(FakeLLM):
    """A router that tells which servers it knows to be up, the way the upstream pool does."""

    def __init__(self) -> None:
        super().__init__()
        self.health_version = 0
        self.inventory_version = 0

    def upstream_states(self) -> list[UpstreamState]:
        return [UpstreamState("http://10.0.0.5:11434", "gpu1", self.online, 0, ("smollm:latest",))]

    def request_found_offline(self) -> None:
        self.online = False
        self.health_version += 1


async def test_what_a_request_learns_about_ollama_reaches_the_status_at_once(
    usage_store: InMemoryUsageStore, recorder: UsageRecorder, gatekeeper: Gatekeeper, clock: FakeClock
) -> None:
    llm = InventoryLLM()
    service = StatusService(llm, FakeMetrics(), usage_store, recorder, gatekeeper, clock, probe_ttl=60)
    assert (await service.status())["ollama"]["online"] is True
    llm.request_found_offline()  # a /chat just answered 503 "Ollama offline"
    assert (await service.status())["ollama"]["online"] is False  # not the cached "online" of a moment ago
    calls = llm.model_calls
    await service.status()
    assert llm.model_calls == calls  # nothing new learned: the cache serves again


async def test_the_servers_and_their_addresses_are_for_admins_only(
    usage_store: InMemoryUsageStore, recorder: UsageRecorder, gatekeeper: Gatekeeper, clock: FakeClock
) -> None:
    service = StatusService(InventoryLLM(), FakeMetrics(), usage_store, recorder, gatekeeper, clock)
    assert "upstreams" not in await service.status()
    admin_view = await service.status(include_upstreams=True)
    assert admin_view["upstreams"] == [
        {
            "name": "gpu1",
            "url": "http://10.0.0.5:11434",
            "online": True,
            "in_flight": 0,
            "models": ["smollm:latest"],
        }
    ]


class StalledUsageStore(InMemoryUsageStore):
    async def count(self) -> int:
        await asyncio.sleep(3600)
        return 0


async def test_a_stalled_database_does_not_hold_the_status_back(
    recorder: UsageRecorder, gatekeeper: Gatekeeper, clock: FakeClock
) -> None:
    service = StatusService(
        FakeLLM(), FakeMetrics(), StalledUsageStore(), recorder, gatekeeper, clock, dependency_timeout=0.05
    )
    document = await asyncio.wait_for(service.status(), 2.0)
    assert document["usage"]["database_online"] is False
    assert document["dependencies"]["database"] == {"online": False}
    assert document["dependencies"]["redis"] is None  # not configured
