"""Issue 13's fairness scenario: one heavy user floods, light users arrive during the flood.

The upstream is bench.fake_upstream with `--slots` (Ollama's `OLLAMA_NUM_PARALLEL`) and a fixed service
time per request, the rest first in, first out, as Ollama queues. The same load goes once straight to it
(what users get from Ollama alone) and once through a gateway whose `OLLAMA_GATE_SLOTS` equals the
upstream's. Every request's prompt names its user, so the upstream's log of generations
(`[tag, arrival, start, end]`, time.monotonic) says who the GPU served when; the client's send times are on
the same clock (CLOCK_MONOTONIC, shared by the processes of one Linux machine).

What is computed, per target (direct, gateway):
- light wait: a light request's latency at the client minus the service time (the time it did not spend
  being generated), p50 and p99 over the light requests;
- slot utilisation: over W = [the flood's send time, the last generation's start] (every moment of W has
  requests waiting), the generations' busy time inside W divided by slots x |W|;
- Jain's fairness index of GPU time over the heavy and light users during the contended window
  I = [first light send, last light send + 3 service times]: x_i = GPU time user i received inside I
  divided by its max-min fair share of slots x |I| (a light user demands one service time, the heavy user
  is unbounded: water-filling), J = (sum x)^2 / (n sum x^2). J = 1 when every user got its fair share in
  I; when the light users get nothing in I (a FIFO queue behind the flood) J falls to about 1/n.
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from bench.load_client import percentile

# One generation in the fake upstream's log: tag, arrival, start, end (end 0: still running).
Generation = tuple[str, float, float, float]
# One request at the client: tag, sent_at, latency_s, status, complete.
Request = tuple[str, float, float, int, bool]


@dataclass(frozen=True, slots=True)
class FairnessProfile:
    heavy: int
    light: int
    light_start_ms: float
    light_every_ms: float
    slots: int
    service_ms: float

    @classmethod
    def full(cls) -> FairnessProfile:
        return cls(200, 10, 1000.0, 400.0, 2, 200.0)

    @classmethod
    def smoke(cls) -> FairnessProfile:
        return cls(24, 3, 100.0, 60.0, 2, 40.0)

    def client_arguments(self) -> list[str]:
        return [
            "--heavy",
            str(self.heavy),
            "--light",
            str(self.light),
            "--light-start-ms",
            str(self.light_start_ms),
            "--light-every-ms",
            str(self.light_every_ms),
            "--timeout",
            str(max(60.0, 3 * self.heavy * self.service_ms / 1000 / self.slots)),
        ]


def overlap(start: float, end: float, window_start: float, window_end: float) -> float:
    return max(0.0, min(end, window_end) - max(start, window_start))


def jain(values: Sequence[float]) -> float:
    """Jain's index (sum x)^2 / (n sum x^2): 1 when all are equal, 1/n when one gets everything."""
    squares = sum(v * v for v in values)
    if not values or squares == 0:
        return float("nan")
    return sum(values) ** 2 / (len(values) * squares)


def max_min_fair(capacity: float, demands: Sequence[float]) -> list[float]:
    """Water-filling: each gets min(its demand, an equal share of what the smaller demands left)."""
    shares = [0.0] * len(demands)
    left = capacity
    open_ = sorted(range(len(demands)), key=lambda i: demands[i])
    while open_:
        equal = left / len(open_)
        smallest = open_[0]
        if demands[smallest] <= equal:
            shares[smallest] = demands[smallest]
            left -= demands[smallest]
            open_.pop(0)
            continue
        for index in open_:
            shares[index] = equal
        break
    return shares


def analyse(
    log: Sequence[Generation], requests: Sequence[Request], slots: int, service_s: float, now: float
) -> dict[str, float]:
    """The scenario's numbers from the upstream's log and the client's records (see the module doc)."""
    lights = [r for r in requests if r[0].startswith("light")]
    light_waits = [max(0.0, r[2] - service_s) * 1000 for r in lights if r[3] == 200]
    flood_sent = min(r[1] for r in requests if r[0] == "heavy")
    ends = [(tag, start, end or now) for tag, _, start, end in log]
    # Utilisation while requests wait: from the flood to the last generation's start.
    last_start = max((start for _, start, _ in ends), default=flood_sent)
    waiting_span = last_start - flood_sent
    busy = sum(overlap(start, end, flood_sent, last_start) for _, start, end in ends)
    utilisation = busy / (slots * waiting_span) * 100 if waiting_span > 0 else float("nan")
    # Fairness over the contended window.
    light_sends = [r[1] for r in lights]
    window_start = min(light_sends)
    window_end = max(light_sends) + 3 * service_s
    users = ["heavy", *sorted({r[0] for r in lights})]
    received = {
        user: sum(overlap(start, end, window_start, window_end) for tag, start, end in ends if tag == user)
        for user in users
    }
    demands = [math.inf] + [service_s * sum(1 for r in lights if r[0] == user) for user in users[1:]]
    fair = max_min_fair(slots * (window_end - window_start), demands)
    normalised = [received[user] / share for user, share in zip(users, fair, strict=True) if share > 0]
    return {
        "light_wait_p50_ms": percentile(light_waits, 0.50),
        "light_wait_p99_ms": percentile(light_waits, 0.99),
        "utilisation_pct": utilisation,
        "jain": jain(normalised),
        "non_200": float(sum(1 for r in requests if r[3] != 200 or not r[4])),
        "makespan_s": max(r[1] + r[2] for r in requests) - flood_sent,
    }


def upstream_call(url: str, path: str, method: str = "GET") -> dict[str, object]:
    request = urllib.request.Request(url + path, data=b"" if method == "POST" else None, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        decoded: dict[str, object] = json.loads(response.read())
        return decoded


def records_of(data: dict[str, object]) -> list[Request]:
    raw = data["requests"]
    assert isinstance(raw, list)
    return [(str(t), float(s), float(lat), int(st), bool(c)) for t, s, lat, st, c in raw]


def log_of(stats: dict[str, object]) -> tuple[list[Generation], float]:
    raw = stats["log"]
    assert isinstance(raw, list)
    now = stats["now"]
    assert isinstance(now, float)
    return [(str(t), float(a), float(s), float(e)) for t, a, s, e in raw], now
