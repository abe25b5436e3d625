"""The OpenAI API through the gateway, driven by the official `openai` SDK and by raw HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import gateway_per_module
from tests.support.fake_ollama import free_port
from tests.support.fake_ollama_openai import FakeOllamaServer, embedding_of
from tests.support.gateway import GatewayProcess

MODEL = "smollm:latest"
ROOMY = {"MEMBER_RATE_LIMIT": "1000/60", "ANON_RATE_LIMIT": "1000/60"}


gate = gateway_per_module(ROOMY, upstream="module_ollama_server")


def new_key(gate: GatewayProcess, user: str) -> str:
    key: str = gate.create_key(user)["key"]
    return key


def sdk(gate: GatewayProcess, key: str) -> openai.OpenAI:
    # No retries: the SDK would otherwise retry a 429 after Retry-After and hide it.
    return openai.OpenAI(base_url=gate.url + "/v1", api_key=key, max_retries=0, timeout=10)


def test_chat_completions_whole_and_streamed(gate: GatewayProcess) -> None:
    client = sdk(gate, new_key(gate, "chat-user"))
    messages: list[Any] = [{"role": "user", "content": "hello there"}]

    whole = client.chat.completions.create(model=MODEL, messages=messages)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True))

    assert whole.choices[0].message.content == "Echo: hello there"
    assert whole.usage is not None and whole.usage.completion_tokens == 3
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hello there"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streamed_usage_arrives_when_asked_for(gate: GatewayProcess) -> None:
    client = sdk(gate, new_key(gate, "usage-stream-user"))

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "count me"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 2


def test_legacy_completions(gate: GatewayProcess) -> None:
    client = sdk(gate, new_key(gate, "completion-user"))

    answer = client.completions.create(model=MODEL, prompt="finish this")

    assert answer.choices[0].text == "Echo: finish this"


def test_models_and_embeddings(gate: GatewayProcess, module_ollama_server: FakeOllamaServer) -> None:
    client = sdk(gate, new_key(gate, "embedding-user"))

    models = client.models.list()
    one = client.models.retrieve(MODEL)
    embedded = client.embeddings.create(model=MODEL, input=["one two", "three"])

    assert sorted(model.id for model in models) == sorted(module_ollama_server.models)
    assert one.id == MODEL
    assert [item.embedding for item in embedded.data] == [embedding_of("one two"), embedding_of("three")]


def test_an_invalid_key_raises_authentication_error(gate: GatewayProcess) -> None:
    client = sdk(gate, "oa-" + "y" * 43)

    with pytest.raises(openai.AuthenticationError) as error:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        client.models.list()

    assert error.value.status_code == 401
    assert error.value.code == "invalid_api_key" and error.value.type == "invalid_request_error"
    assert "API key" in error.value.message


def test_an_exhausted_quota_raises_rate_limit_error(
    tmp_path: Path, module_ollama_server: FakeOllamaServer
) -> None:
    with GatewayProcess(
        tmp_path, ollama_url=module_ollama_server.url, env={"MEMBER_RATE_LIMIT": "1/60"}
    ) as tight:
        client = sdk(tight, new_key(tight, "quota-user"))
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "one"}])

        with pytest.raises(openai.RateLimitError) as error:
            client.embeddings.create(model=MODEL, input="two")
        still_listed = client.models.list()

    assert error.value.status_code == 429 and error.value.code == "rate_limit_exceeded"
    assert int(error.value.response.headers["Retry-After"]) >= 1
    assert len(still_listed.data) >= 2  # listing is not metered


def test_an_unknown_model_raises_not_found(gate: GatewayProcess) -> None:
    client = sdk(gate, new_key(gate, "lost-user"))

    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="no-such-model:1b", messages=[{"role": "user", "content": "hi"}])

    assert "no-such-model:1b" in error.value.message


def test_an_unreachable_ollama_is_503_in_openais_shape(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path, ollama_url=f"http://127.0.0.1:{free_port()}") as offline:
        client = sdk(offline, new_key(offline, "offline-user"))
        with pytest.raises(openai.InternalServerError) as error:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        raw = httpx.get(offline.url + "/v1/models")

    assert error.value.status_code == 503 and error.value.type == "server_error"
    assert raw.status_code == 503 and set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_openai_requests_are_metered_with_tokens_from_usage(gate: GatewayProcess) -> None:
    client = sdk(gate, new_key(gate, "metered-user"))
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a b c"}])
    list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "d e"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    client.embeddings.create(model=MODEL, input="f g h i")
    client.models.list()

    rows = sorted(gate.usage_rows(3, "metered-user"), key=lambda row: row["id"])

    assert [(r["endpoint"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        ("/v1/chat/completions", 3, 4),
        ("/v1/chat/completions", 2, 3),
        ("/v1/embeddings", 4, None),
    ]
    assert all(r["outcome"] == "ok" and r["status"] == 200 for r in rows)


def test_sse_is_relayed_as_it_arrives_with_rate_limit_headers(
    gate: GatewayProcess, module_ollama_server: FakeOllamaServer
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "same events"}], "stream": True}
    headers = {"Authorization": f"Bearer {new_key(gate, 'sse-user')}"}

    direct = httpx.post(module_ollama_server.url + "/v1/chat/completions", json=body)
    through = httpx.post(gate.url + "/v1/chat/completions", json=body, headers=headers)

    assert through.status_code == 200 and through.headers["content-type"].startswith("text/event-stream")
    assert through.content == direct.content and through.content.endswith(b"data: [DONE]\n\n")
    assert through.headers["X-RateLimit-Remaining"] == "999"


def test_gateway_errors_on_v1_use_openais_shape(gate: GatewayProcess) -> None:
    bad_json = httpx.post(
        gate.url + "/v1/chat/completions", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    unknown_path = httpx.get(gate.url + "/v1/no-such-endpoint")

    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
    assert unknown_path.status_code == 404 and "message" in unknown_path.json()["error"]
