"""Formatting for the status page."""

from __future__ import annotations

from ollama_gate.domain.immutable import immutable


@immutable
class ModelInfo:
    name: str
    size_bytes: int

    @property
    def size_gb(self) -> float:
        return round(self.size_bytes / 1e9, 2)


def humanize_uptime(seconds: float) -> str:
    """`1h 0m` style: days and hours only when non-zero, minutes always."""
    total_minutes = int(seconds // 60)
    days, rest = divmod(total_minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = []
    if days:
        parts.append(f"{days}d")
    if days or hours:
        parts.append(f"{hours}h")
    parts.append(f"{minutes}m")
    return " ".join(parts)
