"""`wrk` as the JSON load generator: found on PATH, or installed from the Debian archive when allowed.

Each wrk thread drives one connection and stops after exactly its share of requests (`wrk.thread:stop()`
in the response callback, before the next request is written), so a run is a fixed number of requests
with nothing left in flight: the accounting can demand equality, not "roughly".
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

_MARKER = "BENCH_JSON "
_THREAD_DONE = "BENCH_THREAD_DONE"

_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local clock = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

local body = __BODY__
local keys = { __KEYS__ }
local path = "__PATH__"
local quota = __QUOTA__
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  ok, other, responses, started, finished = 0, 0, 0, 0, 0
  prepared = {}
  local count = math.max(#keys, 1)
  for i = 1, count do
    local headers = { ["Content-Type"] = "application/json" }
    if #keys > 0 then headers["X-API-Key"] = keys[i] end
    prepared[i] = wrk.format("POST", path, headers, body)
  end
  -- Threads start at different keys, so the users are all busy at once.
  next_index = (id * 7) % count
end

function request()
  if started == 0 then started = now() end
  next_index = next_index % #prepared + 1
  return prepared[next_index]
end

function response(status, headers, body)
  responses = responses + 1
  if status == 200 then ok = ok + 1 else other = other + 1 end
  if responses >= quota then
    -- Stop before the next request is written: nothing is left in flight.
    finished = now()
    wrk.thread:stop()
    io.write("__DONE__\n")
    io.flush()
  end
end

function done(summary, latency, requests)
  local total_ok, total_other, first, last = 0, 0, math.huge, 0
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_other = total_other + thread:get("other")
    if thread:get("started") > 0 then first = math.min(first, thread:get("started")) end
    last = math.max(last, thread:get("finished"))
  end
  local seconds = (last > first) and (last - first) or (summary.duration / 1e6)
  local e = summary.errors
  io.write(string.format(
    '__MARKER__{"requests":%d,"ok":%d,"other":%d,"seconds":%.6f,"p50_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d}\n',
    summary.requests, total_ok, total_other, seconds, latency:percentile(50),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.timeout))
end
"""


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load run measured, whichever generator made it."""

    requests: int
    answered_200: int
    other_status: int
    errors: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def lua_script(path: str, body: bytes, keys: list[str], quota: int) -> str:
    return (
        _LUA.replace("__BODY__", _lua_string(body.decode()))
        .replace("__KEYS__", ", ".join(_lua_string(k) for k in keys))
        .replace("__PATH__", path)
        .replace("__QUOTA__", str(quota))
        .replace("__MARKER__", _MARKER)
        .replace("__DONE__", _THREAD_DONE)
    )


def find_wrk(allow_install: bool) -> tuple[str | None, str]:
    """The wrk binary and how it was found; installs the Debian package when allowed and possible."""
    found = shutil.which("wrk")
    if found:
        return found, "found on PATH"
    if not allow_install:
        return None, "not installed (installation not allowed in this mode)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "not installed, and apt-get is unavailable or we are not root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "wrk"]
    print("bench: installing wrk from the Debian archive (apt-get install -y wrk) ...", flush=True)
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        subprocess.run(install, env=env, capture_output=True, check=False)
    found = shutil.which("wrk")
    return (found, "installed with apt-get") if found else (None, "apt-get install wrk failed")


def wrk_version(binary: str) -> str:
    completed = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    first = (completed.stdout or completed.stderr).strip().splitlines()
    return first[0] if first else "wrk"


def _run_until_threads_done(command: list[str], threads: int, timeout: float) -> str:
    """Run wrk and interrupt it once every thread has finished its share.

    wrk's main thread sleeps for the whole `-d` duration even when every worker has stopped; SIGINT
    wakes it, and it then prints its summary as usual.
    """
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    all_done = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        finished = 0
        for line in process.stdout:
            lines.append(line)
            if line.startswith(_THREAD_DONE):
                finished += 1
                if finished == threads:
                    all_done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while process.poll() is None and not all_done.wait(0.01) and time.monotonic() < deadline:
        pass
    # A signal may land on a worker thread that is still exiting: repeat it until wrk is gone.
    for _ in range(50):
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue
    if process.poll() is None:
        process.kill()
    process.wait()
    reader.join(timeout=10)
    return "".join(lines)


def run_wrk(
    binary: str,
    url: str,
    path: str,
    body: bytes,
    keys: list[str],
    connections: int,
    total_requests: int,
    max_seconds: int = 600,
) -> LoadResult:
    """Exactly `connections * (total_requests // connections)` requests, one wrk thread per connection."""
    quota = max(1, total_requests // connections)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua_script(path, body, keys, quota))
    command = [binary, f"-t{connections}", f"-c{connections}", f"-d{max_seconds}s", "--timeout", "30s"]
    try:
        output = _run_until_threads_done([*command, "-s", script.name, url], connections, max_seconds + 60)
    finally:
        Path(script.name).unlink(missing_ok=True)
    line = next((ln for ln in output.splitlines() if ln.startswith(_MARKER)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    data = msgspec.json.decode(line[len(_MARKER) :])
    seconds = data["seconds"]
    errors = data["connect_errors"] + data["read_errors"] + data["write_errors"] + data["timeouts"]
    return LoadResult(
        requests=data["requests"],
        answered_200=data["ok"],
        other_status=data["other"],
        errors=errors,
        requests_per_s=data["requests"] / seconds if seconds else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )
