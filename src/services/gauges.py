"""The gauges' readings, taken every second from what the gateway holds (never from a network call)."""

from __future__ import annotations

from collections.abc import Callable

from ollama_gate.ports.llm import UpstreamInventory
from ollama_gate.ports.quota import QuotaLimiter
from ollama_gate.ports.telemetry import GaugeSnapshot, Telemetry
from ollama_gate.services.gpu_queue import GpuQueue
from ollama_gate.services.usage_recorder import UsageRecorder

ANY_UPSTREAM = "*"


class GaugeSampler:
    def __init__(
        self,
        telemetry: Telemetry,
        inventory: UpstreamInventory,
        gpu: GpuQueue,
        recorder: UsageRecorder,
        database_online: Callable[[], bool],
        shared_limiter: QuotaLimiter | None = None,
    ) -> None:
        self._telemetry = telemetry
        self._inventory = inventory
        self._gpu = gpu
        self._recorder = recorder
        self._database_online = database_online
        self._shared_limiter = shared_limiter

    def snapshot(self) -> GaugeSnapshot:
        queue: dict[tuple[str, str], int] = {}
        slots: dict[tuple[str, str], tuple[int, int]] = {}
        if self._gpu.enabled:
            for view in self._gpu.models():
                queue[(ANY_UPSTREAM, view.model)] = view.waiting
            for upstream in self._gpu.table.upstreams.values():
                for model in sorted((upstream.models or frozenset()) | upstream.busy.keys()):
                    if upstream.slots is not None:
                        slots[(upstream.name, model)] = (upstream.slots, upstream.busy.get(model, 0))
        dependencies = {"database": self._database_online()}
        if self._shared_limiter is not None:
            dependencies["redis"] = self._shared_limiter.healthy
        return GaugeSnapshot(
            queue_depth=queue,
            slots=slots,
            upstream_up={state.name: state.online for state in self._inventory.upstream_states()},
            usage_rows_pending=self._recorder.unsaved,
            usage_rows_dropped=self._recorder.dropped,
            dependency_up=dependencies,
        )

    async def sample(self) -> None:
        self._telemetry.sample(self.snapshot())
