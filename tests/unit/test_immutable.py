"""`immutable` classes: frozen for the type checker, hashed and compared as a frozen dataclass is."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from mypy import api as mypy_api

from ollama_gate.domain.immutable import immutable


@immutable
class Point:
    x: int
    label: str | None = None


@dataclass(frozen=True, slots=True)
class FrozenPoint:
    x: int
    label: str | None = None


@given(st.integers(), st.none() | st.text(), st.integers(), st.none() | st.text())
def test_equality_and_hash_are_a_frozen_dataclass_s(
    x: int, label: str | None, y: int, other: str | None
) -> None:
    assert (Point(x, label) == Point(y, other)) == (FrozenPoint(x, label) == FrozenPoint(y, other))
    assert hash(Point(x, label)) == hash(FrozenPoint(x, label))
    assert {Point(x, label): 1}[Point(x, label)] == 1


def test_an_instance_has_slots_and_no_dict() -> None:
    assert not hasattr(Point(1), "__dict__")
    assert vars(Point)["__slots__"] == ("x", "label")


def test_assigning_a_field_is_a_type_error(tmp_path: Path) -> None:
    program = tmp_path / "assigns.py"
    program.write_text(
        textwrap.dedent(
            """
            from ollama_gate.domain.quota import LimitState, LimitKind
            state = LimitState(LimitKind.REQUESTS, 10, 60.0, 9, 0.0)
            state.remaining = 10
            """
        )
    )
    out, _, status = mypy_api.run(["--strict", "--no-incremental", str(program)])
    assert status == 1
    assert 'Property "remaining" defined in "LimitState" is read-only' in out
