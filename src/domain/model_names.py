"""Model names as Ollama matches them."""

from __future__ import annotations


def model_key(name: str) -> str:
    """The form Ollama matches names in: case-insensitive, `:latest` when no tag is given."""
    name = name.strip().lower()
    return name if ":" in name.rpartition("/")[2] else name + ":latest"
