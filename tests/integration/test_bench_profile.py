"""`python -m bench.profile`: the profiles the performance notes quote, so they cannot rot. No timing is
asserted; only that each profile is of the requests it was asked for."""

from __future__ import annotations

from pathlib import Path

from bench import profile


def test_the_cprofile_holds_the_counted_requests_and_no_warm_up(tmp_path: Path) -> None:
    stats = profile.cprofile(tmp_path / "chat.pstats", 60, stream=False, revision=None)
    handled = {
        name: entry[1]
        for (filename, _, name), entry in stats.stats.items()  # type: ignore[attr-defined]
        if filename.endswith("controllers/chat.py")
    }
    # A handler is a coroutine: cProfile counts its start and its resumption after the upstream answers.
    assert handled["chat"] == 2 * 60
    packages = {name: calls for name, calls, _ in profile.summary(stats, 60)}
    assert packages["ollama_gate/services"] > 1 and packages["aiohttp"] > 1


def test_the_streams_profile_relays_every_line(tmp_path: Path) -> None:
    stats = profile.cprofile(tmp_path / "stream.pstats", 20, stream=True, revision=None)
    lines = [
        entry
        for (filename, _, name), entry in stats.stats.items()  # type: ignore[attr-defined]
        if filename.endswith("services/chat.py") and name == "_is_final_chunk"
    ]
    assert lines and lines[0][1] == 20 * profile.STREAM_CHUNKS
