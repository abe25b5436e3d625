from __future__ import annotations

from dataclasses import field
from typing import Protocol

from ollama_gate.domain.immutable import immutable

# Why a request was turned away, as the metrics name it.
REJECTION_REASONS = (
    "unauthorized",
    "requests",
    "tokens",
    "concurrency",
    "model",
    "queue_full",
    "queue_timeout",
)


class Telemetry(Protocol):
    """What the gateway reports as it works (Prometheus, or nothing). Never raises, never waits: every
    call is on a request's path. Labels are bounded: no user ids, no raw paths, only models an upstream
    lists and plans an admin made."""

    def request_done(
        self,
        endpoint: str,
        model: str | None,
        plan: str,
        status: int,
        seconds: float,
        first_byte: float | None,
    ) -> None:
        """One answered request: its route, how long it took, and how long until its first body byte."""
        ...

    def tokens(self, model: str | None, plan: str, prompt: int, completion: int) -> None: ...

    def rejected(self, reason: str) -> None:
        """One request turned away; `reason` is one of REJECTION_REASONS."""
        ...

    def queue_waited(self, model: str | None, plan: str, seconds: float) -> None: ...

    def sample(self, snapshot: GaugeSnapshot) -> None:
        """The gauges, from what the gateway holds now (taken every second)."""
        ...


@immutable
class GaugeSnapshot:
    """What the gauges show at one moment."""

    # (upstream, model) -> requests waiting; the upstream is '*': a waiting request may take a slot on
    # any upstream that has its model.
    queue_depth: dict[tuple[str, str], int] = field(default_factory=dict)
    # (upstream, model) -> (slots, busy), for the models an upstream lists or runs.
    slots: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    upstream_up: dict[str, bool] = field(default_factory=dict)
    usage_rows_pending: int = 0
    usage_rows_dropped: int = 0
    # 'database', and 'redis' when configured -> reachable.
    dependency_up: dict[str, bool] = field(default_factory=dict)


class MetricsExposition(Protocol):
    """The metrics as a scraper reads them."""

    content_type: str

    def exposition(self) -> bytes: ...
