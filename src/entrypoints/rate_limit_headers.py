"""RateLimit headers (IETF draft) and their legacy X-RateLimit-* equivalents."""

from __future__ import annotations

import math

from ollama_gate.domain.ratelimit import Decision


def rate_limit_headers(decision: Decision | None) -> dict[str, str]:
    """The headers for `decision`; none for a caller without a quota (the admin)."""
    if decision is None:
        return {}
    rate = decision.rate
    reset = str(math.ceil(decision.reset_after))
    remaining = str(decision.remaining)
    return {
        "RateLimit-Policy": f'"{rate.name}";q={rate.limit};w={rate.window_text}',
        "RateLimit": f'"{rate.name}";r={remaining};t={reset}',
        "X-RateLimit-Limit": str(rate.limit),
        "X-RateLimit-Remaining": remaining,
        "X-RateLimit-Reset": reset,
    }
