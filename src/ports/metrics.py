from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SystemSnapshot:
    ram_total_gb: float
    ram_used_gb: float
    ram_percent: float
    cpu_percent: float


class SystemMetrics(Protocol):
    """RAM and CPU of the machine. Must not block the event loop."""

    def snapshot(self) -> SystemSnapshot: ...
