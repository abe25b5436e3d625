"""RateLimit headers (IETF draft: one policy per limit) and their legacy X-RateLimit-* equivalents."""

from __future__ import annotations

import math

from ollama_gate.domain.quota import Admission, LimitKind

_POLICY_SUFFIX = {
    LimitKind.REQUESTS: "",
    LimitKind.TOKENS: "-tokens",
    LimitKind.DAILY_TOKENS: "-daily-tokens",
}


def rate_limit_headers(admission: Admission | None) -> dict[str, str]:
    """The headers for a decision: a `RateLimit-Policy` / `RateLimit` item per windowed limit of the plan
    (the requests one is named after the plan, the token ones `<plan>-tokens`, `<plan>-daily-tokens`),
    and X-RateLimit-* for the first of them. None for a plan without windowed limits (the admin's)."""
    if admission is None:
        return {}
    windowed = [state for state in admission.states if state.window is not None]
    if not windowed:
        return {}
    plan = admission.limits.plan
    policies, values = [], []
    for state in windowed:
        name = f'"{plan}{_POLICY_SUFFIX[state.kind]}"'
        policies.append(f"{name};q={state.limit};w={state.window:g}")
        values.append(f"{name};r={state.remaining};t={math.ceil(state.reset_after)}")
    first = windowed[0]
    return {
        "RateLimit-Policy": ", ".join(policies),
        "RateLimit": ", ".join(values),
        "X-RateLimit-Limit": str(first.limit),
        "X-RateLimit-Remaining": str(first.remaining),
        "X-RateLimit-Reset": str(math.ceil(first.reset_after)),
    }
