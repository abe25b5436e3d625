"""Model names as Ollama matches them."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4096)  # several times per request on the hot path, for a handful of distinct names
def model_key(name: str) -> str:
    """The form Ollama matches names in: case-insensitive, `:latest` when no tag is given."""
    name = name.strip().lower()
    return name if ":" in name.rpartition("/")[2] else name + ":latest"
