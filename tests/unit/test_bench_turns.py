"""The bench's paired loads take turns going first, and come back in the pair's order."""

from __future__ import annotations

from bench.runner import Target, _in_turn


def test_the_pair_takes_turns_and_comes_back_in_its_order() -> None:
    for index, expected_calls in ((0, ["twin", "before"]), (1, ["before", "twin"]), (2, ["twin", "before"])):
        calls: list[Target] = []

        def load(target: Target, calls: list[Target] = calls) -> str:
            calls.append(target)
            return f"{target} measured"

        assert _in_turn(index, ("twin", "before"), load) == ("twin measured", "before measured")
        assert calls == expected_calls
