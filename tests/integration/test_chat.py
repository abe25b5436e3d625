"""POST /chat on the real server, in front of the fake Ollama: the answer's shape and what Ollama is sent."""

from __future__ import annotations

from typing import Any

import httpx

from tests.integration.conftest import gateway_per_module
from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import GatewayProcess

# Not the built-in default, so a request without `model` proves the setting is what is used.
CONFIGURED_DEFAULT_MODEL = "llama3.2:1b"


gate = gateway_per_module({"ANON_RATE_LIMIT": "1000/60", "DEFAULT_MODEL": CONFIGURED_DEFAULT_MODEL})


def chat(gate: GatewayProcess, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(gate.url + "/chat", json=body, timeout=10, **kwargs)


def only_request_with(fake: FakeOllama, prompt: str) -> dict[str, Any]:
    requests = fake.seen.requests_with_prompt(prompt)
    assert len(requests) == 1, requests
    return requests[0]


def test_chat_answers_with_the_documented_shape(gate: GatewayProcess) -> None:
    response = chat(gate, {"message": "what is ml", "model": "smollm:latest"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"user", "tier", "plan", "response"}
    assert body["plan"] == body["tier"]  # the built-in plan of the tier: nothing configured
    assert body["user"] == "anonymous" and body["tier"] == "anonymous"
    answer = body["response"]
    assert answer["model"] == "smollm:latest"
    assert answer["response"] == "Echo: what is ml"
    assert answer["done"] is True
    # Ollama's extras may pass through, its `context` token array never does.
    assert answer["done_reason"] == "stop"
    assert answer["eval_count"] == 4 and answer["prompt_eval_count"] == 3
    assert "context" not in answer


def test_the_upstream_is_asked_for_one_json_answer(gate: GatewayProcess, module_ollama: FakeOllama) -> None:
    assert chat(gate, {"message": "one json answer", "model": "smollm:latest"}).status_code == 200

    sent = only_request_with(module_ollama, "one json answer")
    assert sent["stream"] is False
    assert sent["model"] == "smollm:latest"


def test_the_configured_default_model_is_used_when_none_is_given(
    gate: GatewayProcess, module_ollama: FakeOllama
) -> None:
    response = chat(gate, {"message": "which model answers"})

    assert response.status_code == 200
    assert response.json()["response"]["model"] == CONFIGURED_DEFAULT_MODEL
    assert only_request_with(module_ollama, "which model answers")["model"] == CONFIGURED_DEFAULT_MODEL


def test_system_and_options_are_forwarded_as_given(gate: GatewayProcess, module_ollama: FakeOllama) -> None:
    options = {"temperature": 0.2, "num_predict": 64, "stop": ["\n\n"]}
    response = chat(gate, {"message": "be brief", "system": "You are terse.", "options": options})

    assert response.status_code == 200
    sent = only_request_with(module_ollama, "be brief")
    assert sent["system"] == "You are terse."
    assert sent["options"] == options


def test_nothing_is_invented_when_system_and_options_are_absent(
    gate: GatewayProcess, module_ollama: FakeOllama
) -> None:
    assert chat(gate, {"message": "plain request"}).status_code == 200

    assert set(only_request_with(module_ollama, "plain request")) == {"model", "prompt", "stream"}


def test_unknown_body_fields_are_ignored_and_not_forwarded(
    gate: GatewayProcess, module_ollama: FakeOllama
) -> None:
    body = {"message": "extra fields", "temperature": 3, "stream": True, "nested": {"a": [1, 2]}}
    response = chat(gate, body)

    assert response.status_code == 200
    assert response.json()["response"]["response"] == "Echo: extra fields"
    sent = only_request_with(module_ollama, "extra fields")
    assert "temperature" not in sent and "nested" not in sent
    # The client's `stream` cannot turn the JSON endpoint into a stream.
    assert sent["stream"] is False


def test_the_upstream_gets_its_own_host_header_never_the_clients(
    gate: GatewayProcess, module_ollama: FakeOllama
) -> None:
    # Ollama bound to loopback answers 403 to a Host that is not a local name.
    before = len(module_ollama.seen.hosts)
    response = chat(gate, {"message": "whose host"}, headers={"Host": "gateway.example.com"})

    assert response.status_code == 200
    assert module_ollama.seen.hosts[before:] == [f"127.0.0.1:{module_ollama.port}"]


def test_a_message_in_any_script_reaches_ollama_intact(
    gate: GatewayProcess, module_ollama: FakeOllama
) -> None:
    message = 'Grüße 👋 "quoted" \\ back\nslash'
    response = chat(gate, {"message": message})

    assert response.status_code == 200
    assert response.json()["response"]["response"] == f"Echo: {message}"
    assert only_request_with(module_ollama, message)["prompt"] == message


def test_ollama_going_offline_and_coming_back(fake_ollama: FakeOllama, gateway: GatewayProcess) -> None:
    # Function-scoped fixtures: this test stops its own fake Ollama.
    assert chat(gateway, {"message": "before", "model": "smollm:latest"}).status_code == 200

    fake_ollama.stop()
    offline = chat(gateway, {"message": "while down", "model": "smollm:latest"})
    assert offline.status_code == 503
    assert "offline" in offline.json()["detail"].lower()

    with FakeOllama(port=fake_ollama.port) as revived:
        back = chat(gateway, {"message": "after", "model": "smollm:latest"})
        assert back.status_code == 200
        assert back.json()["response"]["response"] == "Echo: after"
        assert len(revived.seen.requests_with_prompt("after")) == 1


def test_openapi_schema_documents_the_api(gate: GatewayProcess) -> None:
    response = httpx.get(gate.url + "/schema/openapi.json", timeout=10)

    assert response.status_code == 200
    schema = response.json()
    assert {"/chat", "/chat/stream", "/api/status"} <= set(schema["paths"])
    chat_operation = schema["paths"]["/chat"]["post"]
    assert "200" in chat_operation["responses"]
    body_ref = chat_operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body_schema = schema["components"]["schemas"][body_ref.rsplit("/", 1)[-1]]
    assert body_schema["required"] == ["message"]
    assert {"message", "model", "system", "options"} <= set(body_schema["properties"])


def test_swagger_docs_are_served(gate: GatewayProcess) -> None:
    response = httpx.get(gate.url + "/schema/swagger", timeout=10)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger" in response.text.lower()
