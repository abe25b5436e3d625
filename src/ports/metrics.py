from __future__ import annotations

from typing import Protocol

from ollama_gate.domain.immutable import immutable


@immutable
class SystemSnapshot:
    ram_total_gb: float
    ram_used_gb: float
    ram_percent: float
    cpu_percent: float


class SystemMetrics(Protocol):
    """RAM and CPU of the machine. Must not block the event loop."""

    def snapshot(self) -> SystemSnapshot: ...
