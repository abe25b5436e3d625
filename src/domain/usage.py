"""Usage records: one per admitted request, written when the request ends."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from ollama_gate.domain.identity import Tier
from ollama_gate.domain.immutable import immutable


class Outcome(StrEnum):
    OK = "ok"
    UPSTREAM_ERROR = "upstream_error"
    CANCELLED = "cancelled"


@immutable
class TokenCounts:
    prompt: int | None = None
    completion: int | None = None

    @property
    def charged(self) -> int:
        """What a plan's token limits are charged: prompt plus completion, as far as known."""
        return (self.prompt or 0) + (self.completion or 0)


@immutable
class UsageRecord:
    timestamp: datetime
    user: str
    tier: Tier
    key_id: int | None
    client_ip: str
    endpoint: str
    model: str | None
    status: int
    outcome: Outcome
    latency_ms: float
    prompt_tokens: int | None
    completion_tokens: int | None
    id: int | None = None
    plan: str | None = None
    queue_ms: float | None = None  # time waited for a GPU slot (None: it never queued)
    request_id: str | None = None


def tokens_from_final_chunk(chunk: dict[str, object]) -> TokenCounts:
    """Ollama's final chunk counts prompt tokens in prompt_eval_count and output tokens in eval_count."""
    prompt = chunk.get("prompt_eval_count")
    completion = chunk.get("eval_count")
    return TokenCounts(
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )
