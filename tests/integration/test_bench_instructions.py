"""The bench's section 12 (bench/instructions.py): callgrind counts a process's instructions per request
for exactly the requests it is told to, and counts the same again for the same code."""

from __future__ import annotations

from pathlib import Path

from bench import instructions, processes
from tests.support.services import installed_tool


def test_the_bare_forwarder_counts_the_same_per_request_twice(tmp_path: Path) -> None:
    installed_tool("valgrind")
    installed_tool("callgrind_control")
    counts = []
    with processes.fake_upstream(tmp_path, 1, 0.0) as upstream:
        for attempt in range(2):
            out_file = tmp_path / f"callgrind-{attempt}.out"
            wrapper = instructions.callgrind(out_file)
            with processes.bare_forwarder(tmp_path, upstream.url, wrapper=wrapper) as bare:
                per_request, not_200 = instructions.count(bare, [None], 40, out_file)
            assert not_200 == 0
            counts.append(per_request)
    # A forwarded request costs the interpreter hundreds of thousands of instructions, not a few or billions.
    assert 100_000 < counts[0] < 10_000_000
    assert abs(counts[1] / counts[0] - 1) < 0.05, counts
