"""The RateLimit headers: one policy per windowed limit, the same in both forms, a changed plan's at once."""

from __future__ import annotations

from ollama_gate.domain.plans import Window
from ollama_gate.domain.quota import Admission, LimitKind, Limits, LimitState
from ollama_gate.entrypoints.rate_limit_headers import rate_limit_head, rate_limit_headers


def admission(limits: Limits, remaining: int, reset: float) -> Admission:
    states = []
    if limits.requests is not None:
        states.append(
            LimitState(LimitKind.REQUESTS, limits.requests.limit, limits.requests.seconds, remaining, reset)
        )
    if limits.tokens is not None:
        states.append(LimitState(LimitKind.TOKENS, limits.tokens.limit, limits.tokens.seconds, 7, 0.2))
    if limits.concurrency is not None:
        states.append(LimitState(LimitKind.CONCURRENCY, limits.concurrency, None, 1, 0.0))
    return Admission(True, limits, tuple(states))


def test_every_windowed_limit_has_a_policy_and_the_first_has_the_legacy_headers() -> None:
    limits = Limits("team", Window(30, 60.0), Window(1000, 60.0), None, 2)
    head = dict(rate_limit_head(admission(limits, 29, 1.5)))
    assert head[b"ratelimit-policy"] == b'"team";q=30;w=60, "team-tokens";q=1000;w=60'
    assert head[b"ratelimit"] == b'"team";r=29;t=2, "team-tokens";r=7;t=1'
    assert (head[b"x-ratelimit-limit"], head[b"x-ratelimit-remaining"], head[b"x-ratelimit-reset"]) == (
        b"30",
        b"29",
        b"2",
    )


def test_a_plan_changed_under_the_same_name_shows_its_new_limits_at_once() -> None:
    before = Limits("changing", Window(10, 60.0))
    after = Limits("changing", Window(5, 30.0))
    assert dict(rate_limit_head(admission(before, 9, 0.0)))[b"ratelimit-policy"] == b'"changing";q=10;w=60'
    assert dict(rate_limit_head(admission(after, 4, 0.0)))[b"ratelimit-policy"] == b'"changing";q=5;w=30'
    assert dict(rate_limit_head(admission(before, 8, 0.0)))[b"ratelimit-policy"] == b'"changing";q=10;w=60'


def test_no_decision_and_a_plan_without_windows_have_no_headers() -> None:
    assert rate_limit_head(None) == [] and rate_limit_headers(None) == {}
    only_concurrency = admission(Limits("admin-like", concurrency=3), 0, 0.0)
    assert rate_limit_head(only_concurrency) == [] and rate_limit_headers(only_concurrency) == {}


def test_the_litestar_form_holds_the_same_values_under_their_usual_names() -> None:
    decided = admission(Limits("solo", Window(3, 10.0)), 2, 9.2)
    assert rate_limit_headers(decided) == {
        "RateLimit-Policy": '"solo";q=3;w=10',
        "RateLimit": '"solo";r=2;t=10',
        "X-RateLimit-Limit": "3",
        "X-RateLimit-Remaining": "2",
        "X-RateLimit-Reset": "10",
    }
    assert [
        (name.lower().encode(), value.encode()) for name, value in rate_limit_headers(decided).items()
    ] == (rate_limit_head(decided))
