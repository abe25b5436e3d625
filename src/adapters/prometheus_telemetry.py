"""Telemetry as Prometheus metrics (prometheus_client), in one process or across `serve --workers N`.

With several workers prometheus_client's multiprocess mode is on (PROMETHEUS_MULTIPROC_DIR, set by the
supervisor before any worker starts): each worker writes its numbers to files there, and whichever
worker answers /metrics sums them. Gauges say how: the busy slots and waiting requests of each worker
add up (`livesum`), a configured number or a health is the same everywhere (`livemax` / `livemin`).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from ollama_gate.domain.model_names import model_key
from ollama_gate.ports.telemetry import REJECTION_REASONS, GaugeSnapshot

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Model names clients sent, with their labels, remembered until the upstreams' models change (or this
# many pile up: a client may send any name).
_MODEL_LABELS_KEPT = 1024


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROCESS_DIR))


class PrometheusTelemetry:
    """Every family exists from start-up; the unlabelled ones and the rejection reasons start at zero.

    A model label is a model some upstream lists (`known_models`), else `other`: a client naming made-up
    models must not make the metrics grow without bound.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        known_models: Callable[[], frozenset[str]] = frozenset,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._known_models = known_models
        # In multiprocess mode metrics go to the files, not to a registry of this process.
        self._registry = (
            registry if registry is not None else (None if multiprocess() else CollectorRegistry())
        )
        r = self._registry
        self.requests = Counter(
            "ollama_gate_requests", "Answered requests", ["endpoint", "model", "plan", "status"], registry=r
        )
        self.duration = Histogram(
            "ollama_gate_request_duration_seconds",
            "Time to the end of the answer",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.first_byte = Histogram(
            "ollama_gate_time_to_first_byte_seconds",
            "Time to the first byte of the answer's body, streamed or not",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.token_count = Counter(
            "ollama_gate_tokens", "Tokens as Ollama counted them", ["model", "plan", "kind"], registry=r
        )
        self.rejections = Counter("ollama_gate_rejections", "Requests turned away", ["reason"], registry=r)
        self.queue_wait = Histogram(
            "ollama_gate_queue_wait_seconds",
            "Time waited for a GPU slot",
            ["model", "plan"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "ollama_gate_queue_depth",
            "Requests waiting for a GPU slot",
            ["upstream", "model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.slots = Gauge(
            "ollama_gate_slots",
            "GPU slots per model",
            ["upstream", "model"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.slots_busy = Gauge(
            "ollama_gate_slots_busy",
            "GPU slots in use",
            ["upstream", "model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.upstream_up = Gauge(
            "ollama_gate_upstream_up",
            "Ollama server reachable",
            ["upstream"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.rows_pending = Gauge(
            "ollama_gate_usage_rows_pending",
            "Usage rows not yet stored",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.rows_dropped = Gauge(
            "ollama_gate_usage_rows_dropped",
            "Usage rows dropped (buffer full during a database outage) since start",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.dependency_up = Gauge(
            "ollama_gate_dependency_up",
            "Dependency reachable",
            ["name"],
            multiprocess_mode="livemin",
            registry=r,
        )
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        self.dependency_up.labels("database").set(1)
        self.rows_pending.set(0)
        self.rows_dropped.set(0)
        self._known: set[tuple[str, ...]] = set()
        # `labels()` hashes and locks on every call, and a child's own inc/observe check on every call
        # what cannot change: each label set's cells are looked up once (bounded, as the labels are)
        # and then updated directly.
        self._labels_for: frozenset[str] = frozenset()
        self._model_labels: dict[str | None, str] = {}
        self._answers: dict[tuple[str, str, str, int], _AnswerCells] = {}
        self._counters: dict[tuple[Any, ...], Callable[[float], None]] = {}
        self._histograms: dict[tuple[Any, ...], _HistogramCells] = {}

    # -- Telemetry ------------------------------------------------------------------------------------

    def _model(self, model: str | None) -> str:
        known = self._known_models()
        if known is not self._labels_for or len(self._model_labels) > _MODEL_LABELS_KEPT:
            self._labels_for, self._model_labels = known, {}
        label = self._model_labels.get(model)
        if label is None:
            if not model:
                label = "none"
            else:
                key = model_key(model)
                label = key if key in known else "other"
            self._model_labels[model] = label
        return label

    def _counter(self, metric: Counter, *labels: str) -> Callable[[float], None]:
        key = (metric, *labels)
        add = self._counters.get(key)
        if add is None:
            add = self._counters[key] = _counter_cell(metric.labels(*labels))
        return add

    def _histogram(self, metric: Histogram, *labels: str) -> _HistogramCells:
        key = (metric, *labels)
        cells = self._histograms.get(key)
        if cells is None:
            cells = self._histograms[key] = _HistogramCells(metric.labels(*labels))
        return cells

    def request_done(
        self,
        endpoint: str,
        model: str | None,
        plan: str,
        status: int,
        seconds: float,
        first_byte: float | None,
    ) -> None:
        model = self._model(model)
        key = (endpoint, model, plan, status)
        cells = self._answers.get(key)
        if cells is None:
            cells = self._answers[key] = _AnswerCells(
                self._counter(self.requests, endpoint, model, plan, str(status)),
                self._histogram(self.duration, endpoint, model),
            )
        cells.count(1)
        cells.duration.observe(seconds)
        if first_byte is not None:
            # Made at the first answer that has one: a label set with none shows no such series.
            if cells.first_byte is None:
                cells.first_byte = self._histogram(self.first_byte, endpoint, model)
            cells.first_byte.observe(first_byte)

    def tokens(self, model: str | None, plan: str, prompt: int, completion: int) -> None:
        model = self._model(model)
        # A counter only grows: a negative count from a confused upstream is not a token.
        if prompt > 0:
            self._counter(self.token_count, model, plan, "prompt")(prompt)
        if completion > 0:
            self._counter(self.token_count, model, plan, "completion")(completion)

    def rejected(self, reason: str) -> None:
        self._counter(self.rejections, reason)(1)

    def queue_waited(self, model: str | None, plan: str, seconds: float) -> None:
        self._histogram(self.queue_wait, self._model(model), plan).observe(seconds)

    def sample(self, snapshot: GaugeSnapshot) -> None:
        seen: set[tuple[str, ...]] = set()
        for (upstream, model), waiting in snapshot.queue_depth.items():
            self.queue_depth.labels(upstream, model).set(waiting)
            seen.add(("queue", upstream, model))
        for (upstream, model), (slots, busy) in snapshot.slots.items():
            self.slots.labels(upstream, model).set(slots)
            self.slots_busy.labels(upstream, model).set(busy)
            seen.add(("slots", upstream, model))
        for upstream, up in snapshot.upstream_up.items():
            self.upstream_up.labels(upstream).set(1 if up else 0)
        for name, up in snapshot.dependency_up.items():
            self.dependency_up.labels(name).set(1 if up else 0)
        self.rows_pending.set(snapshot.usage_rows_pending)
        self.rows_dropped.set(snapshot.usage_rows_dropped)
        # A queue that emptied shows 0, not its last depth.
        for gone in self._known - seen:
            if gone[0] == "queue":
                self.queue_depth.labels(*gone[1:]).set(0)
            else:
                self.slots_busy.labels(*gone[1:]).set(0)
        self._known |= seen

    # -- the exposition ---------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text format of every metric, summed over the workers in multiprocess mode."""
        if self._registry is not None:
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


# The cells below are prometheus_client's own value objects (what its exposition and multiprocess files
# read), reached through its children's private attributes: tests/unit/test_prometheus_telemetry.py
# checks that updating them shows exactly what the children's public inc/observe would.


def _counter_cell(child: Any) -> Callable[[float], None]:
    """What `child.inc(amount)` adds to, for amounts the caller knows are not negative."""
    add: Callable[[float], None] = child._value.inc
    return add


class _HistogramCells:
    """What `child.observe(amount)` updates: its sum and the first bucket whose bound holds `amount`."""

    __slots__ = ("_add_to_sum", "_bounds", "_buckets")

    def __init__(self, child: Any) -> None:
        self._add_to_sum: Callable[[float], None] = child._sum.inc
        self._bounds: tuple[float, ...] = tuple(child._upper_bounds)
        self._buckets: tuple[Callable[[float], None], ...] = tuple(bucket.inc for bucket in child._buckets)

    def observe(self, amount: float) -> None:
        self._add_to_sum(amount)
        # The last bound is +Inf: some bucket holds every amount (amounts are durations, never NaN).
        self._buckets[bisect_left(self._bounds, amount)](1)


class _AnswerCells:
    """One label set of answers: its request count and its two latency histograms."""

    __slots__ = ("count", "duration", "first_byte")

    def __init__(self, count: Callable[[float], None], duration: _HistogramCells) -> None:
        self.count = count
        self.duration = duration
        self.first_byte: _HistogramCells | None = None


def worker_exited(pid: int) -> None:
    """A worker is gone: its live gauges must no longer count (multiprocess mode)."""
    if multiprocess():
        prometheus_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
