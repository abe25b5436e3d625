"""A plan's ceilings applied to a request body: values above a ceiling are lowered, never refused.

Clients let their users set `num_ctx` and `keep_alive` (Open WebUI's advanced parameters, Home Assistant,
Dify), so refusing would break them; lowering keeps them working within what the GPU's owner allows. A
body that needs no change is left exactly as it came, byte for byte (the services decode a body only
when `needs_lowering` says a ceiling could apply, and re-encode it only when `lower_to_ceilings` changed
something).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from ollama_gate.domain.plans import Plan, parse_duration


class BodyKind(Enum):
    """Where a request's ceilings live, by the API it speaks."""

    OLLAMA_GENERATION = "ollama_generation"  # /api/generate, /api/chat: options, keep_alive
    OLLAMA_EMBEDDING = "ollama_embedding"  # /api/embed, /api/embeddings: options.num_ctx, keep_alive
    OPENAI_GENERATION = "openai_generation"  # /v1/chat/completions, /v1/completions: max_tokens
    OPENAI_EMBEDDING = "openai_embedding"  # /v1/embeddings: nothing to lower


def _lower_int(container: dict[str, Any], key: str, ceiling: int, *, when_absent: bool) -> bool:
    """Lower `container[key]` to `ceiling`: above it, negative (Ollama's "no limit"), absent when
    `when_absent`. Returns whether it changed; a value that is no number is left for Ollama to refuse."""
    value = container.get(key)
    if value is None:
        if not when_absent:
            return False
    elif isinstance(value, bool) or not isinstance(value, int | float) or 0 <= value <= ceiling:
        return False
    container[key] = ceiling
    return True


def _lower_keep_alive(body: dict[str, Any], ceiling: float) -> bool:
    if "keep_alive" not in body:
        return False
    seconds = parse_duration(body["keep_alive"])
    if seconds is None or 0 <= seconds <= ceiling:
        return False
    body["keep_alive"] = int(ceiling) if float(ceiling).is_integer() else ceiling
    return True


def _options(body: dict[str, Any], create: bool) -> dict[str, Any] | None:
    options = body.get("options")
    if isinstance(options, dict):
        return options
    if options is None and create:
        options = body["options"] = {}
        return options
    return None


def lower_to_ceilings(body: dict[str, Any], kind: BodyKind, plan: Plan) -> bool:
    """Apply `plan`'s ceilings to a decoded body in place; returns whether anything changed."""
    changed = False
    if kind in (BodyKind.OLLAMA_GENERATION, BodyKind.OLLAMA_EMBEDDING):
        if plan.max_context is not None:
            options = _options(body, create=False)
            if options is not None:
                changed |= _lower_int(options, "num_ctx", plan.max_context, when_absent=False)
        if plan.max_output is not None and kind is BodyKind.OLLAMA_GENERATION:
            options = _options(body, create=True)
            if options is not None:
                changed |= _lower_int(options, "num_predict", plan.max_output, when_absent=True)
        if plan.max_keep_alive is not None:
            changed |= _lower_keep_alive(body, plan.max_keep_alive)
    elif kind is BodyKind.OPENAI_GENERATION and plan.max_output is not None:
        spelled = [key for key in ("max_completion_tokens", "max_tokens") if body.get(key) is not None]
        for key in spelled:
            changed |= _lower_int(body, key, plan.max_output, when_absent=False)
        if not spelled:
            body["max_tokens"] = plan.max_output
            changed = True
    return changed


def needs_lowering(kind: BodyKind, plan: Plan) -> bool:
    """Whether `plan` has a ceiling that bodies of `kind` can carry (else nothing needs decoding)."""
    if kind is BodyKind.OPENAI_EMBEDDING or not plan.has_ceilings:
        return False
    if kind is BodyKind.OPENAI_GENERATION:
        return plan.max_output is not None
    if kind is BodyKind.OLLAMA_EMBEDDING:
        return plan.max_context is not None or plan.max_keep_alive is not None
    return True
