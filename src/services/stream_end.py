"""The end of a relayed stream, which must happen exactly once however the stream ends."""

from __future__ import annotations

from collections.abc import Callable

from ollama_gate.domain.usage import NO_TOKENS, Outcome, TokenCounts
from ollama_gate.ports.llm import UpstreamResponse


class StreamEnd:
    """Closes a relayed stream's upstream and reports its outcome, once.

    Called from the relay's `finally` when it completes, fails or is cancelled mid-stream, and through
    `abandon()` by the answer that carried it, which covers a client that left before the first chunk
    (the relay's generator then never even started). Synchronous on purpose: cleanup must complete even
    while the task is being cancelled.
    """

    __slots__ = ("_on_end", "_upstream", "finished")

    def __init__(self, upstream: UpstreamResponse, on_end: Callable[[Outcome, TokenCounts], None]) -> None:
        self._upstream = upstream
        self._on_end = on_end
        self.finished = False

    def __call__(self, outcome: Outcome, tokens: TokenCounts) -> None:
        if self.finished:
            return
        self.finished = True
        self._upstream.close()
        self._on_end(outcome, tokens)

    def abandon(self) -> None:
        """Ends the stream as cancelled, unless it has already ended."""
        self(Outcome.CANCELLED, NO_TOKENS)
