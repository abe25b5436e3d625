"""The gauges' readings come from what the gateway holds: the queue, the slots, the servers, the writer."""

from __future__ import annotations

import asyncio

from ollama_gate.adapters.memory_stores import InMemoryUsageStore
from ollama_gate.domain.identity import Caller
from ollama_gate.domain.plans import Plan
from ollama_gate.ports.llm import UpstreamState
from ollama_gate.ports.telemetry import GaugeSnapshot
from ollama_gate.services.gauges import GaugeSampler
from ollama_gate.services.gpu_queue import GpuQueue
from ollama_gate.services.usage_recorder import UsageRecorder
from tests.unit.fakes import FakeClock, ticket

MODEL = "smollm:latest"


class Inventory:
    inventory_version = 1
    health_version = 0

    def upstream_states(self) -> list[UpstreamState]:
        return [
            UpstreamState("http://a", "gpu-a", True, 0, (MODEL,), ()),
            UpstreamState("http://b", "gpu-b", False, 0, (MODEL,), ()),
        ]


class Recording:
    def __init__(self) -> None:
        self.snapshots: list[GaugeSnapshot] = []

    def sample(self, snapshot: GaugeSnapshot) -> None:
        self.snapshots.append(snapshot)


async def test_a_snapshot_of_slots_queue_servers_rows_and_dependencies() -> None:
    inventory = Inventory()
    gpu = GpuQueue(inventory, FakeClock(), {"gpu-a": 1, "gpu-b": 1})
    recorder = UsageRecorder(InMemoryUsageStore(), FakeClock())
    telemetry = Recording()
    sampler = GaugeSampler(telemetry, inventory, gpu, recorder, lambda: False)  # type: ignore[arg-type]
    await gpu.acquire(ticket(Caller.anonymous("10.0.0.1"), Plan("p")), MODEL)
    waiting = asyncio.create_task(gpu.acquire(ticket(Caller.anonymous("10.0.0.2"), Plan("p")), MODEL))
    await asyncio.sleep(0)
    await sampler.sample()
    [snapshot] = telemetry.snapshots
    assert snapshot.queue_depth[("*", MODEL)] == 1
    assert snapshot.slots[("gpu-a", MODEL)] == (1, 1)
    assert snapshot.slots[("gpu-b", MODEL)] == (1, 0)
    assert snapshot.upstream_up == {"gpu-a": True, "gpu-b": False}
    assert snapshot.dependency_up == {"database": False}
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
