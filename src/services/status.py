"""The status page: uptime, machine, Ollama, usage."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ollama_gate.domain.errors import GatewayError, StoreUnavailable
from ollama_gate.domain.immutable import immutable
from ollama_gate.domain.plans import ANONYMOUS_PLAN, BUILTIN_PLANS, MEMBER_PLAN, Window
from ollama_gate.domain.status import ModelInfo, humanize_uptime
from ollama_gate.ports.clock import Clock
from ollama_gate.ports.llm import LLMBackend, UpstreamInventory
from ollama_gate.ports.metrics import SystemMetrics
from ollama_gate.ports.stores import UsageStore
from ollama_gate.services.gatekeeper import Gatekeeper
from ollama_gate.services.gpu_queue import GpuQueue
from ollama_gate.services.usage_recorder import UsageRecorder

log = logging.getLogger(__name__)


@immutable
class OllamaProbe:
    online: bool
    models: list[ModelInfo]


def describe_requests(window: Window | None) -> str:
    """`10 req / 60s`, as the status has always said it; `unlimited` for a plan without the limit."""
    return "unlimited" if window is None else f"{window.limit} req / {window.seconds:g}s"


class StatusService:
    """Builds the status document within a bound, whatever its dependencies do.

    The Ollama probe is bounded in time and shared by concurrent callers for `probe_ttl` seconds, so a
    flood of status calls is not a flood of upstream calls; but what requests learn about a server
    (refused, back) invalidates it at once, so the status never contradicts the answer a request just
    got. The database and the shared counters each get `dependency_timeout` seconds; one that does not
    answer in time is reported unhealthy instead of holding the status back.
    """

    def __init__(
        self,
        llm: LLMBackend,
        metrics: SystemMetrics,
        usage_store: UsageStore,
        recorder: UsageRecorder,
        gatekeeper: Gatekeeper,
        clock: Clock,
        probe_timeout: float = 1.5,
        probe_ttl: float = 2.0,
        dependency_timeout: float = 1.0,
        shares_state: bool = False,
        gpu: GpuQueue | None = None,
    ) -> None:
        self._llm = llm
        self._metrics = metrics
        self._usage_store = usage_store
        self._recorder = recorder
        self._gatekeeper = gatekeeper
        self._clock = clock
        self._probe_timeout = probe_timeout
        self._probe_ttl = probe_ttl
        self._dependency_timeout = dependency_timeout
        self._shares_state = shares_state
        self._gpu = gpu
        self._started = clock.monotonic()
        self._probe: OllamaProbe | None = None
        self._probe_expires = 0.0
        self._probe_health = -1
        self._probe_lock = asyncio.Lock()

    def _health_version(self) -> int:
        return self._llm.health_version if isinstance(self._llm, UpstreamInventory) else 0

    async def ollama(self) -> OllamaProbe:
        async with self._probe_lock:
            if (
                self._probe is None
                or self._clock.monotonic() >= self._probe_expires
                or self._probe_health != self._health_version()
            ):
                self._probe = await self._fetch_probe()
                self._probe_expires = self._clock.monotonic() + self._probe_ttl
                # Read after the probe: the probe itself marks servers up or down.
                self._probe_health = self._health_version()
            return self._probe

    async def _fetch_probe(self) -> OllamaProbe:
        try:
            models = await asyncio.wait_for(self._llm.models(self._probe_timeout), self._probe_timeout + 0.1)
        except (GatewayError, TimeoutError) as error:
            log.debug("Ollama probe failed: %s", error)
            return OllamaProbe(False, [])
        return OllamaProbe(True, models)

    async def _usage_total(self) -> int | None:
        """Rows in the store plus rows on their way there, or None when the store cannot be counted."""
        try:
            return await asyncio.wait_for(
                self._recorder.total(self._usage_store.count), self._dependency_timeout
            )
        except (StoreUnavailable, TimeoutError):
            return None

    async def _shared(self) -> tuple[int | None, dict[str, int]]:
        """Active anonymous identities and rejection counts, or this instance's own when the shared
        store is slow (`None` for the identities then: they are not known here)."""
        gatekeeper = self._gatekeeper
        try:
            async with asyncio.timeout(self._dependency_timeout):
                return await gatekeeper.active_anonymous_identities(), await gatekeeper.rejection_counts()
        except TimeoutError:
            return None, gatekeeper.local_rejection_counts()

    async def status(self, include_upstreams: bool = False) -> dict[str, Any]:
        """The status document; `include_upstreams` (for admins) adds each server with its address."""
        uptime = self._clock.monotonic() - self._started
        system = self._metrics.snapshot()
        probe, total, (active, rejections) = await asyncio.gather(
            self.ollama(), self._usage_total(), self._shared()
        )
        gatekeeper = self._gatekeeper
        limiter = gatekeeper.limiter_health
        document = {
            "server": {"uptime_seconds": int(uptime), "uptime_human": humanize_uptime(uptime)},
            "system": {
                "ram_total_gb": system.ram_total_gb,
                "ram_used_gb": system.ram_used_gb,
                "ram_percent": system.ram_percent,
                "cpu_percent": system.cpu_percent,
            },
            "ollama": {
                "online": probe.online,
                "models": [{"name": m.name, "size_gb": m.size_gb} for m in probe.models],
            },
            "usage": {
                # Rows in the store plus rows still on their way there; since start if the store is down.
                "total_requests": total if total is not None else self._recorder.recorded,
                "active_anonymous_ips": active,
                "anon_rate_limit": describe_requests(gatekeeper.plans.plan(ANONYMOUS_PLAN).requests),
                "member_rate_limit": describe_requests(gatekeeper.plans.plan(MEMBER_PLAN).requests),
                **rejections,
                "usage_rows_pending": self._recorder.unsaved,
                "usage_rows_dropped": self._recorder.dropped,
                "database_online": total is not None,
            },
            "rate_limiter": limiter,
            # The built-in plans as in force, and whether the environment or a stored edit set them.
            "plans": {
                plan.name: {**plan.fields(), "source": gatekeeper.plans.source(plan.name)}
                for plan in (gatekeeper.plans.plan(name) for name in BUILTIN_PLANS)
            },
            "dependencies": {
                "database": {"online": total is not None},
                "redis": {"online": bool(limiter["healthy"]) and active is not None}
                if self._shares_state
                else None,
            },
        }
        if self._gpu is not None and self._gpu.enabled:
            models = await self._gpu.snapshot()
            document["queue"] = {
                "waiting": sum(m.waiting for m in models),
                "models": [
                    {"model": m.model, "slots": m.slots, "busy": m.busy, "waiting": m.waiting} for m in models
                ],
            }
        if include_upstreams:
            document["upstreams"] = self._upstreams()
        return document

    def _upstreams(self) -> list[dict[str, Any]]:
        """Each Ollama server, as the probe just left it (none for a backend that does not list them)."""
        if not isinstance(self._llm, UpstreamInventory):
            return []
        return [
            {
                "name": s.name,
                "url": s.url,
                "online": s.online,
                "in_flight": s.in_flight,
                "models": list(s.models),
            }
            for s in self._llm.upstream_states()
        ]
