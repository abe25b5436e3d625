"""RateLimit headers (IETF draft: one policy per limit) and their legacy X-RateLimit-* equivalents."""

from __future__ import annotations

import functools
import math

from ollama_gate.domain.quota import Admission, Limits
from ollama_gate.entrypoints.asgi_answers import EncodedHeaders

# The names as they go out on the ASGI answers (lower case, as HTTP/1.1 allows and uvicorn sends them)
# and as Litestar's responses are given them.
_TITLES = {
    b"ratelimit-policy": "RateLimit-Policy",
    b"ratelimit": "RateLimit",
    b"x-ratelimit-limit": "X-RateLimit-Limit",
    b"x-ratelimit-remaining": "X-RateLimit-Remaining",
    b"x-ratelimit-reset": "X-RateLimit-Reset",
}


# Bounded: plans come and go while the gateway runs.
@functools.lru_cache(maxsize=256)
def _policies_of(limits: Limits) -> tuple[tuple[str, ...], bytes]:
    """The quoted policy name of each windowed limit, in the order of an admission's states, and the
    RateLimit-Policy value: they depend on a plan's limits alone, so they are made once per limits."""
    windows = ((limits.requests, ""), (limits.tokens, "-tokens"), (limits.daily, "-daily-tokens"))
    names, policies = [], []
    for window, suffix in windows:
        if window is not None:
            name = f'"{limits.plan}{suffix}"'
            names.append(name)
            policies.append(f"{name};q={window.limit};w={window.seconds:g}")
    return tuple(names), ", ".join(policies).encode("latin-1")


def rate_limit_head(admission: Admission | None) -> EncodedHeaders:
    """The headers for a decision, encoded for an ASGI answer: a `RateLimit-Policy` / `RateLimit` item per
    windowed limit of the plan (the requests one is named after the plan, the token ones `<plan>-tokens`,
    `<plan>-daily-tokens`), and X-RateLimit-* for the first of them. None at all without a decision or for
    a plan without windowed limits (the admin's)."""
    if admission is None:
        return []
    names, policy = _policies_of(admission.limits)
    if not names:
        return []
    windowed = [state for state in admission.states if state.window is not None]
    first = windowed[0]
    first_reset = str(math.ceil(first.reset_after))
    values = ", ".join(
        [
            f"{name};r={state.remaining};t={math.ceil(state.reset_after)}"
            for name, state in zip(names, windowed, strict=True)
        ]
    )
    return [
        (b"ratelimit-policy", policy),
        (b"ratelimit", values.encode("latin-1")),
        (b"x-ratelimit-limit", str(first.limit).encode()),
        (b"x-ratelimit-remaining", str(first.remaining).encode()),
        (b"x-ratelimit-reset", first_reset.encode()),
    ]


def rate_limit_headers(admission: Admission | None) -> dict[str, str]:
    """The same headers for a Litestar response (an error's)."""
    return {_TITLES[name]: value.decode("latin-1") for name, value in rate_limit_head(admission)}
