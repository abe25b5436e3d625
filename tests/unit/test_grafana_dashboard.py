"""The shipped Grafana dashboard queries only metric families the gateway exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ollama_gate.adapters.prometheus_telemetry import PrometheusTelemetry

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def test_every_query_uses_an_exported_family() -> None:
    exported = {
        line.split()[2]
        for line in PrometheusTelemetry().exposition().decode().splitlines()
        if line.startswith("# TYPE")
    }
    names_with_suffixes = exported | {
        f"{name}_{suffix}" for name in exported for suffix in ("bucket", "count", "sum")
    }
    panels = json.loads(DASHBOARD.read_text())["panels"]
    used = {
        name
        for panel in panels
        for target in panel["targets"]
        for name in re.findall(r"\bollama_gate_[a-z_]+", target["expr"])
    }
    assert used and used <= names_with_suffixes, used - names_with_suffixes
    assert {"ollama_gate_requests_total", "ollama_gate_slots_busy", "ollama_gate_queue_depth"} <= used
