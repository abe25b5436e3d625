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


# Unknown counts (nothing answered, an error): one shared value, not an object per request (a request
# waiting for the GPU holds its default for as long as it waits).
NO_TOKENS = TokenCounts()


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


# Where Ollama's final chunk counts prompt tokens and output tokens.
PROMPT_TOKENS_FIELD = "prompt_eval_count"
COMPLETION_TOKENS_FIELD = "eval_count"
TOKEN_COUNT_FIELDS = (PROMPT_TOKENS_FIELD, COMPLETION_TOKENS_FIELD)


def tokens_from_final_chunk(chunk: dict[str, object]) -> TokenCounts:
    """The token counts of Ollama's final chunk (its TOKEN_COUNT_FIELDS)."""
    prompt = chunk.get(PROMPT_TOKENS_FIELD)
    completion = chunk.get(COMPLETION_TOKENS_FIELD)
    return TokenCounts(
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )
