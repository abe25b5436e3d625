"""The layer rule of the guide, checked on every import in src/ (those inside functions and behind
TYPE_CHECKING too): dependencies point inward, and the composition root alone knows the adapters.

- domain: the standard library and the domain itself; no framework, no I/O library.
- ports: the domain and the ports.
- services: the domain, the ports, other services, and msgspec (JSON is the services' trade).
- adapters: anything but the entrypoints.
- entrypoints: anything; but only the composition root (container.py) imports an adapter.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "ollama_gate"

ALLOWED_INSIDE: dict[str, set[str]] = {
    "domain": {"domain"},
    "ports": {"domain", "ports"},
    "services": {"domain", "ports", "services"},
    "adapters": {"domain", "ports", "services", "adapters"},
    "entrypoints": {"domain", "ports", "services", "adapters", "entrypoints"},
}
THIRD_PARTY_ALLOWED: dict[str, set[str] | None] = {
    "domain": set(),
    "ports": set(),
    "services": {"msgspec"},
    "adapters": None,  # None: any
    "entrypoints": None,
}
COMPOSITION_ROOT = "entrypoints/container.py"


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return [name for name in found if name != "__future__"]


def layer_files() -> list[tuple[str, Path]]:
    return [
        (path.relative_to(SRC).parts[0], path) for path in sorted(SRC.rglob("*.py")) if path.parent != SRC
    ]


def violations(layer: str, path: Path, relative: str | None = None) -> list[str]:
    """What `path` (a file of `layer`, named `relative` under src/) imports against the rule."""
    problems = []
    relative = relative or path.relative_to(SRC).as_posix()
    for module in imported_modules(path):
        top = module.split(".")[0]
        if top == PACKAGE:
            target = module.split(".")[1] if "." in module else ""
            if target and target not in ALLOWED_INSIDE[layer]:  # the package itself: its __version__
                problems.append(f"{relative} imports {module}")
            elif target == "adapters" and layer == "entrypoints" and relative != COMPOSITION_ROOT:
                problems.append(f"{relative} imports {module}: only {COMPOSITION_ROOT} may")
        elif top not in sys.stdlib_module_names:
            allowed = THIRD_PARTY_ALLOWED[layer]
            if allowed is not None and top not in allowed:
                problems.append(f"{relative} imports the third-party {module}")
    return problems


def test_every_source_file_belongs_to_a_layer() -> None:
    assert {layer for layer, _ in layer_files()} <= set(ALLOWED_INSIDE)


@pytest.mark.parametrize("layer", sorted(ALLOWED_INSIDE))
def test_dependencies_point_inward(layer: str) -> None:
    problems = [
        problem for name, path in layer_files() if name == layer for problem in violations(name, path)
    ]
    assert problems == []


def test_the_check_catches_a_violation(tmp_path: Path) -> None:
    """The rule itself can fail: a domain module that imports SQLAlchemy and an adapter is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("import sqlalchemy\nfrom ollama_gate.adapters.sql import stores\n")
    assert [problem.split(" imports ")[1] for problem in violations("domain", bad, "domain/bad.py")] == [
        "the third-party sqlalchemy",
        "ollama_gate.adapters.sql",
    ]
