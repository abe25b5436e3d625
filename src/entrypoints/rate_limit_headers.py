"""RateLimit headers (IETF draft: one policy per limit) and their legacy X-RateLimit-* equivalents."""

from __future__ import annotations

import math

from ollama_gate.domain.quota import Admission, LimitKind, Limits
from ollama_gate.entrypoints.asgi_answers import EncodedHeaders

_POLICY_SUFFIX = {
    LimitKind.REQUESTS: "",
    LimitKind.TOKENS: "-tokens",
    LimitKind.DAILY_TOKENS: "-daily-tokens",
}
# The names as they go out on the ASGI answers (lower case, as HTTP/1.1 allows and uvicorn sends them)
# and as Litestar's responses are given them.
_TITLES = {
    b"ratelimit-policy": "RateLimit-Policy",
    b"ratelimit": "RateLimit",
    b"x-ratelimit-limit": "X-RateLimit-Limit",
    b"x-ratelimit-remaining": "X-RateLimit-Remaining",
    b"x-ratelimit-reset": "X-RateLimit-Reset",
}
# A plan's policy names and its RateLimit-Policy value depend on its limits alone: made once per Limits
# (the gatekeeper keeps one per plan, replaced when the plan changes), found by the plan's name and kept
# while the Limits is the same object. Bounded, as plans come and go while the gateway runs: when full, a
# new plan's are made per answer.
_POLICIES_KEPT = 256
_policies: dict[str, tuple[Limits, tuple[str, ...], bytes]] = {}


def _policies_of(admission: Admission) -> tuple[tuple[str, ...], bytes]:
    """The quoted policy name of each windowed limit, and the RateLimit-Policy value."""
    limits = admission.limits
    known = _policies.get(limits.plan)
    if known is not None and known[0] is limits:
        return known[1], known[2]
    names, policies = [], []
    for state in admission.states:
        if state.window is not None:
            name = f'"{limits.plan}{_POLICY_SUFFIX[state.kind]}"'
            names.append(name)
            policies.append(f"{name};q={state.limit};w={state.window:g}")
    made = (tuple(names), ", ".join(policies).encode("latin-1"))
    if limits.plan in _policies or len(_policies) < _POLICIES_KEPT:
        _policies[limits.plan] = (limits, *made)
    return made


def rate_limit_head(admission: Admission | None) -> EncodedHeaders:
    """The headers for a decision, encoded for an ASGI answer: a `RateLimit-Policy` / `RateLimit` item per
    windowed limit of the plan (the requests one is named after the plan, the token ones `<plan>-tokens`,
    `<plan>-daily-tokens`), and X-RateLimit-* for the first of them. None at all without a decision or for
    a plan without windowed limits (the admin's)."""
    if admission is None:
        return []
    names, policy = _policies_of(admission)
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
