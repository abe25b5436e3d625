"""Telemetry that reports nowhere: for the CLI, and for tests that look at something else."""

from __future__ import annotations

from ollama_gate.ports.telemetry import GaugeSnapshot


class NoTelemetry:
    def request_done(
        self,
        endpoint: str,
        model: str | None,
        plan: str,
        status: int,
        seconds: float,
        first_byte: float | None,
    ) -> None:
        return None

    def tokens(self, model: str | None, plan: str, prompt: int, completion: int) -> None:
        return None

    def rejected(self, reason: str) -> None:
        return None

    def queue_waited(self, model: str | None, plan: str, seconds: float) -> None:
        return None

    def sample(self, snapshot: GaugeSnapshot) -> None:
        return None
