"""Issue 15's "waiting is cheap": thousands of requests waiting in the scheduler's queue, slots full.

The upstream is bench.fake_upstream with `--slots` and a gate: while the gate is closed every generation
that starts holds its slot; `POST /bench/release` opens it and everything then answers at once. The
gateway has as many slots as the upstream and queue bounds raised above the load. The bench:
1. warms the gateway up with the gate open, closes it, and reads the gateway's RSS (the baseline);
2. opens `count` connections from bench.load_client (its own process) and sends every request;
3. waits until the upstream's slots are full and the gateway's `ollama_gate_queue_depth` (from /metrics)
   says the rest wait, then, without polling anything, samples the gateway's RSS and measures its CPU
   seconds over `seconds`;
4. opens the gate and times the drain: from the release to the last answer at the client.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import msgspec

from bench import processes
from bench.fairness import upstream_call
from bench.processes import REPO, Child, RssSampler

Numbers = dict[str, float]


def queue_depth(gateway_url: str) -> float:
    """The gateway's waiting requests, summed over upstreams and models (its /metrics; loopback is admin)."""
    with urllib.request.urlopen(gateway_url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ollama_gate_queue_depth{")
    )


def measure(
    upstream: Child,
    gateway: Child,
    keys_file: Path,
    count: int,
    slots: int,
    seconds: float,
    gateway_queue: bool = True,
) -> Numbers:
    """The numbers of steps 1-4 above. With `gateway_queue` False (the bare forwarder, for reference) the
    requests wait in the upstream's own queue instead, and readiness is read there."""
    upstream_call(upstream.url, "/bench/hold", "POST")
    baseline_mb = processes.rss_mb(gateway.pid)
    command = [
        sys.executable,
        "-m",
        "bench.load_client",
        "waiting",
        "--port",
        str(gateway.port),
        "--path",
        "/chat",
        "--count",
        str(count),
        "--keys-file",
        str(keys_file),
        "--timeout",
        "180",
    ]
    client = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert client.stderr is not None
        line = client.stderr.readline()
        if not line.startswith("SENT "):
            raise RuntimeError(f"the waiting client did not send: {line}{client.stderr.read()}")
        sent_at = float(line.split()[1])
        expected = count - slots
        deadline = time.monotonic() + 120
        depth = 0.0
        while time.monotonic() < deadline:
            stats = upstream_call(upstream.url, "/bench/stats")
            waiting = stats["waiting"]
            assert isinstance(waiting, int)
            depth = queue_depth(gateway.url) if gateway_queue else float(waiting)
            if depth >= expected and stats["running"] == slots:
                break
            time.sleep(0.25)
        queued_after = time.monotonic() - sent_at
        # Nothing polls the gateway from here to the release: its CPU is its own.
        time.sleep(0.5)
        cpu = processes.cpu_seconds(gateway.pid)
        with RssSampler(gateway.pid, interval=0.05) as sampler:
            time.sleep(seconds)
        cpu = processes.cpu_seconds(gateway.pid) - cpu
        waiting_mb = sampler.peak_mb
        released_at = time.monotonic()
        upstream_call(upstream.url, "/bench/release", "POST")
        out, err = client.communicate(timeout=240)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    if client.returncode != 0:
        raise RuntimeError(f"the waiting client failed ({client.returncode}):\n{err}")
    result = msgspec.json.decode(out.strip().splitlines()[-1])
    statuses: dict[str, int] = result["statuses"]
    return {
        "waiting_requests": float(count),
        "waiting_queued": depth,
        "waiting_queued_after_s": queued_after,
        "waiting_baseline_rss_mb": baseline_mb,
        "waiting_rss_mb": waiting_mb,
        "waiting_extra_rss_mb": waiting_mb - baseline_mb,
        "waiting_extra_kb_per_request": (waiting_mb - baseline_mb) * 1024 / count,
        "waiting_cpu_s": cpu,
        "waiting_cpu_pct": cpu / seconds * 100,
        "waiting_drain_s": float(result["last_answer_at"]) - released_at,
        "waiting_answered_200": float(statuses.get("200", 0)),
        "waiting_not_200": float(count - statuses.get("200", 0)),
        "waiting_connect_s": float(result["connect_s"]),
    }
