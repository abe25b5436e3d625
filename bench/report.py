"""Medians, target checks, the printed table and results.json."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Run = dict[str, float]


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: a measurement, its per-run values, and the target it is held to (if any)."""

    scenario: str
    label: str
    key: str
    unit: str
    target: str = ""
    # Decides pass/fail from the per-run values; None for information-only rows.
    check: Callable[[list[float]], bool] | None = None
    # How the headline number is formed from the per-run values (median unless said otherwise).
    summary: str = "median"
    # "info", "target" (a performance goal), "calibrated" (a goal scaled to this machine, informational)
    # or "check" (correctness: a miss fails the bench).
    kind: str = "info"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def headline(row: Row, values: list[float]) -> float:
    if not values:
        return float("nan")
    if row.summary == "max":
        return max(values)
    if row.summary == "sum":
        return sum(values)
    return median(values)


def _format(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "-"
    if unit == "req/s":
        return f"{value:,.0f}"
    if unit in ("", "count"):
        return f"{value:,.0f}"
    if unit == "%":
        return f"{value:+.1f}%"
    if unit == "pct":  # a share, not a change: no sign
        return f"{value:.1f}%"
    if unit == "index":
        return f"{value:.3f}"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "MB":
        return f"{value:.1f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


_SHOWN_UNIT = {"pct": "%"}


def evaluate(rows: list[Row], runs: list[Run]) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    for row in rows:
        values = [run[row.key] for run in runs if row.key in run]
        passed = row.check(values) if row.check is not None and values else None
        results.append(
            {
                "scenario": row.scenario,
                "measurement": row.label,
                "key": row.key,
                "unit": row.unit,
                "target": row.target,
                "summary": row.summary,
                "value": headline(row, values),
                "runs": values,
                "passed": passed,
                "kind": row.kind,
            }
        )
    return results


def table(results: list[dict[str, object]]) -> str:
    header = ("scenario", "measurement", "target", "result", "per run", "")
    lines: list[tuple[str, ...]] = [header]
    previous = ""
    for result in results:
        unit = str(result["unit"])
        runs = result["runs"]
        assert isinstance(runs, list)
        value = result["value"]
        assert isinstance(value, float)
        summary = "" if result["summary"] == "median" else f" ({result['summary']})"
        passed = result["passed"]
        verdict = "" if passed is None else ("PASS" if passed else "MISS")
        scenario = str(result["scenario"])
        lines.append(
            (
                scenario if scenario != previous else "",
                f"{result['measurement']} [{_SHOWN_UNIT.get(unit, unit)}]"
                if unit and unit not in ("count", "index")
                else str(result["measurement"]),
                str(result["target"]),
                _format(value, unit) + summary,
                " / ".join(_format(v, unit) for v in runs),
                verdict,
            )
        )
        previous = scenario
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rendered = []
    for index, line in enumerate(lines):
        rendered.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if index == 0:
            rendered.append("  ".join("-" * w for w in widths))
    return "\n".join(rendered)
