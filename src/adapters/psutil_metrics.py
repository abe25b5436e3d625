from __future__ import annotations

import psutil

from ollama_gate.ports.metrics import SystemSnapshot

_GB = 1024**3


class PsutilMetrics:
    def __init__(self) -> None:
        # cpu_percent(interval=None) measures since the previous call and never sleeps; prime it once.
        psutil.cpu_percent(interval=None)

    def snapshot(self) -> SystemSnapshot:
        memory = psutil.virtual_memory()
        return SystemSnapshot(
            ram_total_gb=round(memory.total / _GB, 2),
            ram_used_gb=round((memory.total - memory.available) / _GB, 2),
            ram_percent=round(float(memory.percent), 1),
            cpu_percent=round(float(psutil.cpu_percent(interval=None)), 1),
        )
