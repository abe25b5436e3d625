"""The telemetry updates prometheus_client's value cells directly (adapters/prometheus_telemetry.py): the
exposition must be exactly what the metrics' own public inc/observe would have made of the same events."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from ollama_gate.adapters.prometheus_telemetry import PrometheusTelemetry
from ollama_gate.domain.model_names import model_key
from ollama_gate.ports.telemetry import REJECTION_REASONS

KNOWN = frozenset({"smollm:latest", "llama3.2:1b"})
seconds = st.floats(min_value=0, max_value=400, allow_nan=False)
# Bounds themselves, and amounts just past them, are where a bucket is chosen wrongly first.
amounts = st.one_of(seconds, st.sampled_from([0.005, 0.01, 1.0, 2.5, 300.0, math.nextafter(0.005, 1)]))
models = st.sampled_from([None, "", "smollm:latest", "smollm", "llama3.2:1b", "made-up"])
plans = st.sampled_from(["member", "anonymous", "gold"])
answer = st.tuples(
    st.just("answer"),
    st.sampled_from(["/chat", "/api/chat"]),
    models,
    plans,
    st.sampled_from([200, 429, 502]),
    amounts,
    st.one_of(st.none(), amounts),
)
tokens = st.tuples(st.just("tokens"), models, plans, st.integers(-3, 10_000), st.integers(-3, 10_000))
rejection = st.tuples(st.just("rejected"), st.sampled_from(sorted(REJECTION_REASONS)))
waited = st.tuples(st.just("waited"), models, plans, amounts)
events = st.lists(st.one_of(answer, tokens, rejection, waited), max_size=40)


def label_of(model: str | None) -> str:
    if not model:
        return "none"
    return model_key(model) if model_key(model) in KNOWN else "other"


def replay_through_the_public_api(reference: PrometheusTelemetry, happened: list[tuple[Any, ...]]) -> None:
    """What each event means, told to prometheus_client through its children's public methods."""
    for event in happened:
        kind, *rest = event
        if kind == "answer":
            endpoint, model, plan, status, duration, first_byte = rest
            model = label_of(model)
            reference.requests.labels(endpoint, model, plan, str(status)).inc()
            reference.duration.labels(endpoint, model).observe(duration)
            if first_byte is not None:
                reference.first_byte.labels(endpoint, model).observe(first_byte)
        elif kind == "tokens":
            model, plan, prompt, completion = rest
            for name, count in (("prompt", prompt), ("completion", completion)):
                if count > 0:
                    reference.token_count.labels(label_of(model), plan, name).inc(count)
        elif kind == "rejected":
            reference.rejections.labels(rest[0]).inc()
        else:
            model, plan, duration = rest
            reference.queue_wait.labels(label_of(model), plan).observe(duration)


def replay(telemetry: PrometheusTelemetry, happened: list[tuple[Any, ...]]) -> None:
    for event in happened:
        kind, *rest = event
        if kind == "answer":
            telemetry.request_done(*rest)
        elif kind == "tokens":
            telemetry.tokens(*rest)
        elif kind == "rejected":
            telemetry.rejected(*rest)
        else:
            telemetry.queue_waited(*rest)


def exposition_without_created(registry: CollectorRegistry) -> list[str]:
    # `_created` lines are the moment each series was made: the only lines two registries may differ in.
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


@settings(deadline=None, max_examples=200)
@given(happened=events)
def test_the_exposition_is_what_the_public_api_would_show(happened: list[tuple[Any, ...]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    telemetry = PrometheusTelemetry(known_models=lambda: KNOWN, registry=ours)
    reference = PrometheusTelemetry(known_models=lambda: KNOWN, registry=theirs)

    replay(telemetry, happened)
    replay_through_the_public_api(reference, happened)

    assert exposition_without_created(ours) == exposition_without_created(theirs)


def test_an_answer_lands_in_the_bucket_of_its_bound() -> None:
    registry = CollectorRegistry()
    telemetry = PrometheusTelemetry(known_models=lambda: KNOWN, registry=registry)
    telemetry.request_done("/chat", "smollm:latest", "member", 200, 0.01, None)
    text = generate_latest(registry).decode()
    duration = 'ollama_gate_request_duration_seconds_bucket{endpoint="/chat",le="%s",model="smollm:latest"}'
    assert f"{duration % '0.005'} 0.0" in text
    assert f"{duration % '0.01'} 1.0" in text  # a bound holds its own value (le: less or equal)
    assert f"{duration % '+Inf'} 1.0" in text
    assert 'ollama_gate_time_to_first_byte_seconds_count{endpoint="/chat",model="smollm:latest"}' not in text
