"""The status page: uptime, machine, Ollama, usage."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from ollama_gate.domain.errors import GatewayError, StoreUnavailable
from ollama_gate.domain.status import ModelInfo, humanize_uptime
from ollama_gate.ports.clock import Clock
from ollama_gate.ports.llm import LLMBackend, UpstreamInventory
from ollama_gate.ports.metrics import SystemMetrics
from ollama_gate.ports.stores import UsageStore
from ollama_gate.services.gatekeeper import Gatekeeper
from ollama_gate.services.usage_recorder import UsageRecorder

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OllamaProbe:
    online: bool
    models: list[ModelInfo]


class StatusService:
    """Builds the status document. The Ollama probe is bounded in time and shared by concurrent callers
    for `probe_ttl` seconds, so a flood of status calls is not a flood of upstream calls."""

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
    ) -> None:
        self._llm = llm
        self._metrics = metrics
        self._usage_store = usage_store
        self._recorder = recorder
        self._gatekeeper = gatekeeper
        self._clock = clock
        self._probe_timeout = probe_timeout
        self._probe_ttl = probe_ttl
        self._started = clock.monotonic()
        self._probe: OllamaProbe | None = None
        self._probe_expires = 0.0
        self._probe_lock = asyncio.Lock()

    async def ollama(self) -> OllamaProbe:
        async with self._probe_lock:
            if self._probe is None or self._clock.monotonic() >= self._probe_expires:
                self._probe = await self._fetch_probe()
                self._probe_expires = self._clock.monotonic() + self._probe_ttl
            return self._probe

    async def _fetch_probe(self) -> OllamaProbe:
        try:
            models = await asyncio.wait_for(self._llm.models(self._probe_timeout), self._probe_timeout + 0.1)
        except (GatewayError, TimeoutError) as error:
            log.debug("Ollama probe failed: %s", error)
            return OllamaProbe(False, [])
        return OllamaProbe(True, models)

    async def _stored_requests(self) -> int | None:
        try:
            return await self._usage_store.count()
        except StoreUnavailable:
            return None

    async def status(self) -> dict[str, Any]:
        uptime = self._clock.monotonic() - self._started
        system = self._metrics.snapshot()
        probe, stored = await asyncio.gather(self.ollama(), self._stored_requests())
        gatekeeper = self._gatekeeper
        return {
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
                "total_requests": (stored if stored is not None else self._recorder.recorded)
                + (self._recorder.unsaved if stored is not None else 0),
                "active_anonymous_ips": await gatekeeper.active_anonymous_identities(),
                "anon_rate_limit": gatekeeper.anonymous_rate.describe(),
                "member_rate_limit": gatekeeper.member_rate.describe(),
                **await gatekeeper.rejection_counts(),
                "usage_rows_pending": self._recorder.unsaved,
                "usage_rows_dropped": self._recorder.dropped,
                "database_online": stored is not None,
            },
            "rate_limiter": gatekeeper.limiter_health,
            "upstreams": self._upstreams(),
        }

    def _upstreams(self) -> list[dict[str, Any]]:
        """Each Ollama server, as the probe just left it (none for a backend that does not list them)."""
        if not isinstance(self._llm, UpstreamInventory):
            return []
        return [
            {"url": s.url, "online": s.online, "in_flight": s.in_flight, "models": list(s.models)}
            for s in self._llm.upstream_states()
        ]
