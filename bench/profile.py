"""The hot path's profiles, as the performance notes quote them: `python -m bench.profile MODE`.

- `count [--stream] [--streams N] [--rounds N] [TARGET ...]`: instructions per `/chat` (section 12's method,
  bench.instructions), or per 20-line `/chat/stream` with `--stream` (chunks 20 ms apart, ten streams at a
  time), counted by callgrind. A TARGET is `here` (the working tree), `bare` (the bare forwarder) or a git
  revision; the targets take turns, round after round, so a drift falls on each alike. A stream's count
  includes what the process does while it waits for its chunks (the gateway's timers: about 2.7 million
  instructions a second, some 100,000 a stream here), so it compares builds of the gateway, not the
  gateway with the bare forwarder.
- `cprofile [--stream] [--requests N] [--revision REV] OUT`: cProfile of the gateway's requests alone
  (switched on and off by signal after a warm-up), saved to OUT (pstats), with a summary per package.
  cProfile inflates small calls: it says where the calls go, `count` what they cost.
- `threads [--rounds N]`: `/chat` under wrk at 20 connections, the bare forwarder and the gateway in
  turn: requests per second, and each one's CPU seconds by thread (whether the event loop's thread is
  saturated, and what the usage writer's thread takes beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pstats
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from bench import compare, instructions, processes, runner, wrk
from bench.load_client import GATEWAY_BODY
from bench.processes import Child

STREAM_CHUNKS = 20
STREAM_CHUNK_MS = 20.0
STREAMS_AT_ONCE = 10
KEYS = 10
# What `cprofile` puts first on the gateway's PYTHONPATH: a `sitecustomize` that profiles between signals.
_PROFILER = """\
import cProfile, os, signal
_profile = cProfile.Profile()
signal.signal(signal.SIGUSR1, lambda *_: _profile.enable())
signal.signal(signal.SIGUSR2, lambda *_: (_profile.disable(), _profile.dump_stats(os.environ["BENCH_PSTATS"])))
"""


@contextlib.contextmanager
def _python_paths(targets: list[str]) -> Iterator[dict[str, str | None]]:
    """Each target's PYTHONPATH head: None for the working tree and the bare forwarder, a worktree's shim
    for a revision (removed afterwards)."""
    with contextlib.ExitStack() as stack:
        yield {
            target: None if target in ("here", "bare") else stack.enter_context(compare.revision(target))[0]
            for target in targets
        }


@contextlib.contextmanager
def _target(
    workdir: Path,
    upstream: Child,
    name: str,
    python_path: str | None,
    settings: dict[str, str],
    wrapper: list[str],
) -> Iterator[tuple[Child, list[str], Path | None]]:
    """The target running (the child, its member keys, its usage database)."""
    label = name.replace("/", "_")
    if name == "bare":
        with processes.bare_forwarder(workdir, upstream.url, wrapper=wrapper) as child:
            yield child, [], None
        return
    database = workdir / f"{label}-{time.monotonic_ns()}.db"
    with processes.gateway(
        workdir,
        upstream.url,
        database,
        runner.RAISED_RATE_LIMIT,
        runner._hot_path(settings),
        name=f"profiled {label}",
        python_path=python_path,
        wrapper=wrapper,
    ) as child:
        yield child, processes.create_member_keys(child.url, KEYS), database


def _streams(child: Child, keys: list[str], workdir: Path, count: int) -> None:
    """`count` streams at once (each of STREAM_CHUNKS lines), all complete or an error."""
    extra = ["--count", str(count), "--chunks", str(STREAM_CHUNKS)]
    if keys:
        keys_file = workdir / "profile-keys.txt"
        keys_file.write_text("\n".join(keys))
        extra += ["--keys-file", str(keys_file)]
    result = processes.run_load_client("streams", child.port, "/chat/stream", extra, timeout=600)
    if result.get("complete") != count:
        raise SystemExit(f"bench.profile: {result.get('complete')} of {count} streams complete: {result}")


def _count_streams(child: Child, keys: list[str], workdir: Path, out_file: Path, lots: int) -> float:
    """Instructions per stream over `lots` lots of STREAMS_AT_ONCE streams, after a warm-up of five."""
    for _ in range(5):
        _streams(child, keys, workdir, STREAMS_AT_ONCE)
    instructions._control(child, "-i", "on")
    for _ in range(lots):
        _streams(child, keys, workdir, STREAMS_AT_ONCE)
    instructions._control(child, "-i", "off")
    instructions._control(child, "--dump")
    return instructions._totals(out_file) / (lots * STREAMS_AT_ONCE)


# Section 12's count: a full batch of usage rows (see bench.instructions).
COUNTED_REQUESTS = 500


def count(targets: list[str], rounds: int, stream: bool, streams: int) -> dict[str, list[float]]:
    """Each target's count per request (COUNTED_REQUESTS of them) or per stream (`streams`), one a
    round."""
    counts: dict[str, list[float]] = {target: [] for target in targets}
    chunks, delay = (STREAM_CHUNKS, STREAM_CHUNK_MS) if stream else (1, 0.0)
    with (
        tempfile.TemporaryDirectory(prefix="ollama-gate-count-") as temporary,
        _python_paths(targets) as paths,
    ):
        workdir = Path(temporary)
        with processes.fake_upstream(workdir, chunks, delay, name="counted upstream") as upstream:
            for round_number in range(rounds):
                for index, target in enumerate(targets):
                    out_file = workdir / f"callgrind-{round_number}-{index}.out"
                    wrapper = instructions.callgrind(out_file)
                    settings = instructions.COUNTED_FLUSH
                    with _target(workdir, upstream, target, paths[target], settings, wrapper) as (
                        child,
                        keys,
                        database,
                    ):
                        if stream:
                            per = _count_streams(child, keys, workdir, out_file, streams // STREAMS_AT_ONCE)
                        else:
                            per, not_200 = instructions.count(
                                child, keys or [None], COUNTED_REQUESTS, out_file, database
                            )
                            if not_200:
                                raise SystemExit(f"bench.profile: {not_200} answers were not 200 ({target})")
                    counts[target].append(per)
                    say(f"round {round_number + 1}, {target}: {per:,.0f}")
    return counts


def cprofile(out: Path, requests: int, stream: bool, revision: str | None) -> pstats.Stats:
    """The gateway's profile over `requests` requests (or streams), after as many to warm it up."""
    chunks, delay = (STREAM_CHUNKS, STREAM_CHUNK_MS) if stream else (1, 0.0)
    with (
        tempfile.TemporaryDirectory(prefix="ollama-gate-cprofile-") as temporary,
        _python_paths([revision] if revision else []) as paths,
    ):
        workdir = Path(temporary)
        profiler = workdir / "profiler"
        profiler.mkdir()
        (profiler / "sitecustomize.py").write_text(_PROFILER)
        build = paths.get(revision) if revision else None
        python_path = str(profiler) + (os.pathsep + build if build else "")
        settings = {"BENCH_PSTATS": str(out.resolve())}
        with (
            processes.fake_upstream(workdir, chunks, delay, name="profiled upstream") as upstream,
            _target(workdir, upstream, "gateway", python_path, settings, []) as (child, keys, _),
        ):

            def load() -> None:
                if stream:
                    _streams(child, keys, workdir, requests)
                else:
                    with instructions.connected(child) as connection:
                        instructions.exchange_all(child, connection, keys, requests)

            load()
            time.sleep(1.0)
            os.kill(child.pid, signal.SIGUSR1)
            time.sleep(0.3)
            load()
            time.sleep(1.0)
            os.kill(child.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 30
            while not out.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
    return pstats.Stats(str(out))


def _package(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if "ollama_gate/" in filename:
        return "ollama_gate/" + filename.split("ollama_gate/", 1)[1].split("/", 1)[0]
    return "builtins" if filename == "~" else "standard library"


def summary(stats: pstats.Stats, requests: int) -> list[tuple[str, float, float]]:
    """Per package: calls and own time (microseconds) per request, the most time first."""
    packages: dict[str, list[float]] = {}
    for (filename, _, _), entry in stats.stats.items():  # type: ignore[attr-defined]
        calls, own_time = entry[1], entry[2]
        totals = packages.setdefault(_package(filename), [0.0, 0.0])
        totals[0] += calls / requests
        totals[1] += own_time / requests * 1e6
    return sorted(((name, calls, us) for name, (calls, us) in packages.items()), key=lambda row: -row[2])


def threads(rounds: int, total: int) -> list[tuple[str, float, list[float]]]:
    """(target, requests per second, CPU seconds of each of its busiest threads), each round."""
    binary, how = wrk.find_wrk(allow_install=False)
    if binary is None:
        raise SystemExit(f"bench.profile: wrk {how}")
    measured: list[tuple[str, float, list[float]]] = []
    with (
        tempfile.TemporaryDirectory(prefix="ollama-gate-threads-") as temporary,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(temporary)
        upstream = stack.enter_context(processes.fake_upstream(workdir, 1, 0.0, name="upstream"))
        started = {
            target: stack.enter_context(_target(workdir, upstream, target, None, {}, []))
            for target in ("bare", "gateway")
        }
        for _ in range(rounds):
            for target, (child, keys, _) in started.items():
                process = psutil.Process(child.pid)
                before = {thread.id: thread.user_time + thread.system_time for thread in process.threads()}
                url = f"http://{processes.HOST}:{child.port}"
                result = wrk.run_wrk(binary, url, "/chat", GATEWAY_BODY, keys, 20, total)
                after = {thread.id: thread.user_time + thread.system_time for thread in process.threads()}
                busiest = sorted((cpu - before.get(tid, 0.0) for tid, cpu in after.items()), reverse=True)
                measured.append((target, result.requests_per_s, busiest[:4]))
                say(
                    f"{target}: {result.requests_per_s:,.0f} requests/s; CPU s by thread {[round(s, 2) for s in busiest[:4]]}"
                )
    return measured


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    counting = modes.add_parser("count", help="callgrind instructions per request or stream")
    counting.add_argument("targets", nargs="*", default=["here"], help="here, bare or a git revision")
    counting.add_argument("--rounds", type=int, default=2)
    counting.add_argument("--stream", action="store_true")
    counting.add_argument("--streams", type=int, default=200, help="streams counted per round, in lots of 10")
    profiling = modes.add_parser("cprofile", help="cProfile of the gateway's requests")
    profiling.add_argument("out", type=Path)
    profiling.add_argument("--requests", type=int, default=2000)
    profiling.add_argument("--stream", action="store_true")
    profiling.add_argument("--revision")
    by_thread = modes.add_parser("threads", help="CPU by thread under wrk")
    by_thread.add_argument("--rounds", type=int, default=3)
    by_thread.add_argument("--requests", type=int, default=30_000)
    args = parser.parse_args(argv)
    if args.mode == "count":
        if (why := instructions.unavailable()) is not None:
            raise SystemExit(f"bench.profile: {why}")
        for target, values in count(args.targets, args.rounds, args.stream, args.streams).items():
            say(f"{target}: {' / '.join(f'{v:,.0f}' for v in values)}; least {min(values):,.0f}")
    elif args.mode == "cprofile":
        stats = cprofile(args.out, args.requests, args.stream, args.revision)
        for package, calls, us in summary(stats, args.requests):
            say(f"{package:28} {calls:8.1f} calls {us:9.1f} us per request")
    else:
        threads(args.rounds, args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
