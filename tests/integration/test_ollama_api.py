"""Ollama's own API through the gateway, driven by the official `ollama` Python client and by raw HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.integration.conftest import gateway_per_module
from tests.support.fake_ollama import free_port
from tests.support.fake_ollama_openai import FakeOllamaServer, embedding_of
from tests.support.gateway import GatewayProcess

MODEL = "smollm:latest"
ROOMY = {"MEMBER_RATE_LIMIT": "1000/60", "ANON_RATE_LIMIT": "1000/60"}
ADMIN_TOKEN = "test-admin-token-for-the-ollama-api"


gate = gateway_per_module(ROOMY, upstream="module_ollama_server")
# Two requests a minute per member, and an admin token: loopback is no longer enough to be admin.
tight_gate = gateway_per_module(
    {"MEMBER_RATE_LIMIT": "2/60", "ADMIN_TOKEN": ADMIN_TOKEN}, upstream="module_ollama_server"
)


def new_key(gate: GatewayProcess, user: str, admin_headers: dict[str, str] | None = None) -> str:
    key: str = gate.create_key(user, headers=admin_headers)["key"]
    return key


def client_for(gate: GatewayProcess, key: str | None) -> ollama.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return ollama.Client(host=gate.url, headers=headers, timeout=10)


def chat_and_list_errors(client: ollama.Client) -> tuple[ollama.ResponseError, ollama.ResponseError]:
    """What the client raises for a chat and for a listing: both must raise."""
    with pytest.raises(ollama.ResponseError) as chat_error:
        client.chat(MODEL, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ollama.ResponseError) as list_error:
        client.list()
    return chat_error.value, list_error.value


def chat_body(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **extra}


# -- the official client ------------------------------------------------------------------------------


def test_chat_streamed_and_not(gate: GatewayProcess) -> None:
    client = client_for(gate, new_key(gate, "chat-user"))

    parts = list(client.chat(MODEL, messages=[{"role": "user", "content": "hello there"}], stream=True))
    whole = client.chat(MODEL, messages=[{"role": "user", "content": "hello there"}])

    assert "".join(part.message.content or "" for part in parts) == "Echo: hello there"
    assert len(parts) == 4 and parts[-1].done and parts[-1].done_reason == "stop"
    assert whole.message.content == "Echo: hello there" and whole.eval_count == 3


def test_generate_streamed_and_not(gate: GatewayProcess) -> None:
    client = client_for(gate, new_key(gate, "generate-user"))

    parts = list(client.generate(MODEL, "tell me more", stream=True))
    whole = client.generate(MODEL, "tell me more")

    assert "".join(part.response or "" for part in parts) == "Echo: tell me more"
    assert parts[-1].done and parts[-1].context == list(range(10))
    assert whole.response == "Echo: tell me more"


def test_list_show_embed_and_ps(gate: GatewayProcess, module_ollama_server: FakeOllamaServer) -> None:
    client = client_for(gate, new_key(gate, "listing-user"))

    listed = client.list()
    shown = client.show(MODEL)
    embedded = client.embed(MODEL, input=["one two", "three"])
    running = client.ps()

    assert sorted(m.model or "" for m in listed.models) == sorted(module_ollama_server.models)
    assert listed.models[0].size == module_ollama_server.models[listed.models[0].model or ""]
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.capabilities == ["completion"]
    assert [list(v) for v in embedded.embeddings] == [embedding_of("one two"), embedding_of("three")]
    assert sorted(m.name or "" for m in running.models) == sorted(module_ollama_server.models)


def test_an_invalid_key_is_401_for_the_client(gate: GatewayProcess) -> None:
    client = client_for(gate, "oa-" + "x" * 43)

    chat_error, list_error = chat_and_list_errors(client)

    assert chat_error.status_code == list_error.status_code == 401
    assert "API key" in chat_error.error


def test_an_unknown_model_is_404_for_the_client(gate: GatewayProcess) -> None:
    client = client_for(gate, new_key(gate, "lost-user"))

    with pytest.raises(ollama.ResponseError) as streamed:
        list(client.chat("no-such-model:1b", messages=[{"role": "user", "content": "hi"}], stream=True))
    with pytest.raises(ollama.ResponseError) as shown:
        client.show("no-such-model:1b")

    assert streamed.value.status_code == shown.value.status_code == 404
    assert streamed.value.error == "model 'no-such-model:1b' not found"


def test_an_exhausted_quota_is_429_and_listing_is_not_metered(tight_gate: GatewayProcess) -> None:
    admin = {"X-Admin-Token": ADMIN_TOKEN}
    key = new_key(tight_gate, "quota-user", admin)
    client = client_for(tight_gate, key)
    client.chat(MODEL, messages=[{"role": "user", "content": "one"}])
    list(client.generate(MODEL, "two", stream=True))

    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(MODEL, input="three")
    raw = httpx.post(
        tight_gate.url + "/api/chat", json=chat_body("four"), headers={"Authorization": f"Bearer {key}"}
    )

    assert refused.value.status_code == 429
    assert raw.status_code == 429 and set(raw.json()) == {"error"}
    assert "rate limit exceeded" in raw.json()["error"]
    assert int(raw.headers["Retry-After"]) >= 1 and raw.headers["X-RateLimit-Remaining"] == "0"
    # Listings, model details and the version are not inference: they still answer.
    assert len(client.list().models) >= 2
    assert client.show(MODEL).details is not None
    assert client.ps().models


def test_an_unreachable_ollama_is_503_for_the_client(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with GatewayProcess(tmp_path, ollama_url=dead) as offline:
        chat_error, list_error = chat_and_list_errors(client_for(offline, None))

    assert chat_error.status_code == list_error.status_code == 503
    assert "offline" in chat_error.error


# -- metering -----------------------------------------------------------------------------------------


def test_inference_is_metered_with_token_counts_and_listings_are_not(gate: GatewayProcess) -> None:
    key = new_key(gate, "metered-user")
    client = client_for(gate, key)
    list(client.chat(MODEL, messages=[{"role": "user", "content": "a b c"}], stream=True))
    client.generate(MODEL, "d e")
    client.embed(MODEL, input="f g h i")
    client.embeddings(MODEL, prompt="j")
    with pytest.raises(ollama.ResponseError):
        client.chat("no-such-model:1b", messages=[{"role": "user", "content": "k"}])
    client.list()
    client.show(MODEL)
    client.ps()

    rows = gate.usage_rows(5, "metered-user")

    by_endpoint = {row["endpoint"]: row for row in rows if row["model"] == MODEL}
    assert len(rows) == 5
    assert (by_endpoint["/api/chat"]["prompt_tokens"], by_endpoint["/api/chat"]["completion_tokens"]) == (
        3,
        4,
    )
    assert (
        by_endpoint["/api/generate"]["prompt_tokens"],
        by_endpoint["/api/generate"]["completion_tokens"],
    ) == (
        2,
        3,
    )
    assert by_endpoint["/api/embed"]["prompt_tokens"] == 4
    assert by_endpoint["/api/embeddings"]["outcome"] == "ok"
    [missing] = [row for row in rows if row["model"] != MODEL]
    assert (missing["status"], missing["outcome"]) == (404, "upstream_error")
    assert all(row["user"] == "metered-user" and row["tier"] == "member" for row in rows)


def test_every_inference_answer_carries_rate_limit_headers(gate: GatewayProcess) -> None:
    headers = {"Authorization": f"Bearer {new_key(gate, 'headers-user')}"}

    streamed = httpx.post(gate.url + "/api/chat", json=chat_body("x"), headers=headers)
    whole = httpx.post(
        gate.url + "/api/generate", json={"model": MODEL, "prompt": "y", "stream": False}, headers=headers
    )
    missing = httpx.post(gate.url + "/api/chat", json={**chat_body("z"), "model": "nope:1b"}, headers=headers)

    assert [r.status_code for r in (streamed, whole, missing)] == [200, 200, 404]
    assert [r.headers["X-RateLimit-Remaining"] for r in (streamed, whole, missing)] == ["999", "998", "997"]
    assert all(r.headers["X-RateLimit-Limit"] == "1000" for r in (streamed, whole, missing))


# -- faithful forwarding ------------------------------------------------------------------------------


def test_stream_absent_means_streamed_and_the_bytes_are_ollamas_own(
    gate: GatewayProcess, module_ollama_server: FakeOllamaServer
) -> None:
    body = chat_body("the same bytes please")
    direct = httpx.post(module_ollama_server.url + "/api/chat", json=body)
    through = httpx.post(gate.url + "/api/chat", json=body)
    whole_direct = httpx.post(
        module_ollama_server.url + "/api/generate", json={"model": MODEL, "prompt": "p", "stream": False}
    )
    whole_through = httpx.post(
        gate.url + "/api/generate", json={"model": MODEL, "prompt": "p", "stream": False}
    )

    assert through.headers["content-type"] == "application/x-ndjson"
    assert through.content == direct.content and len(through.content.splitlines()) == 6
    assert whole_through.content == whole_direct.content
    assert whole_through.headers["content-type"].startswith("application/json")


def test_a_native_stream_is_relayed_chunk_by_chunk(
    gate: GatewayProcess, module_ollama_server: FakeOllamaServer
) -> None:
    # The fake holds its answer after the first chunk until released: that chunk can only reach the
    # client before the release if the gateway relays as it receives.
    with httpx.stream(
        "POST", gate.url + "/api/chat", json=chat_body("!held in the middle"), timeout=10
    ) as response:
        lines = response.iter_lines()
        first = json.loads(next(lines))
        module_ollama_server.release()
        rest = [json.loads(line) for line in lines]

    assert first["message"]["content"] == "Echo:" and first["done"] is False
    assert rest[-1]["done"] is True


def test_a_client_that_walks_away_closes_the_upstream_stream(
    gate: GatewayProcess, module_ollama_server: FakeOllamaServer
) -> None:
    key = new_key(gate, "walker")
    abandoned_before = module_ollama_server.abandoned
    with httpx.stream(
        "POST",
        gate.url + "/api/chat",
        json=chat_body("!long story"),
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["done"] is False
        next(lines)

    assert module_ollama_server.wait_until(lambda: module_ollama_server.abandoned > abandoned_before)
    [row] = gate.usage_rows(1, "walker")
    assert (row["endpoint"], row["outcome"]) == ("/api/chat", "cancelled")


def test_root_head_and_version_answer_as_ollama(gate: GatewayProcess) -> None:
    root = httpx.get(gate.url + "/")
    head = httpx.head(gate.url + "/")
    version = httpx.get(gate.url + "/api/version")

    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert head.status_code == 200 and head.content == b""
    assert version.json() == {"version": "0.12.0"}


def test_bad_json_is_400_in_ollamas_shape(gate: GatewayProcess) -> None:
    response = httpx.post(
        gate.url + "/api/chat", content=b"{not json", headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert set(response.json()) == {"error"} and "invalid request body" in response.json()["error"]


# -- model management ---------------------------------------------------------------------------------


def test_model_management_is_refused_to_members(gate: GatewayProcess) -> None:
    key = new_key(gate, "not-an-admin")
    client = client_for(gate, key)
    headers = {"Authorization": f"Bearer {key}"}

    with pytest.raises(ollama.ResponseError) as pull:
        client.pull("new-model:1b")
    with pytest.raises(ollama.ResponseError) as delete:
        client.delete(MODEL)
    with pytest.raises(ollama.ResponseError) as copy:
        client.copy(MODEL, "copy:latest")
    blob = httpx.head(gate.url + "/api/blobs/sha256:" + "2" * 64, headers=headers)

    assert pull.value.status_code == delete.value.status_code == copy.value.status_code == 403
    assert pull.value.error == "model management is for admins only"
    assert blob.status_code == 403


def test_an_admin_pulls_with_streamed_progress_then_deletes(
    gate: GatewayProcess, module_ollama_server: FakeOllamaServer
) -> None:
    # No admin token configured: a direct loopback caller is the admin.
    admin = client_for(gate, None)

    progress = [update.status for update in admin.pull("fresh-model:1b", stream=True)]
    listed = {m.model for m in admin.list().models}
    deleted = admin.delete("fresh-model:1b")

    assert progress[0] == "pulling manifest" and progress[-1] == "success"
    assert [u for u in progress if u == "pulling aaaa"] == ["pulling aaaa"] * 3
    assert "fresh-model:1b" in listed
    assert deleted.status == "success" and "fresh-model:1b" not in module_ollama_server.models


def test_with_an_admin_token_only_the_token_manages_models(tight_gate: GatewayProcess) -> None:
    anonymous = client_for(tight_gate, None)
    admin = ollama.Client(host=tight_gate.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)

    with pytest.raises(ollama.ResponseError) as refused:
        anonymous.pull("token-model:1b")
    pulled = admin.pull("token-model:1b")

    assert refused.value.status_code == 403
    assert pulled.status == "success"
    # The admin's client, with the admin token as its Bearer, reads the listings too.
    assert "token-model:1b" in {m.model for m in admin.list().models}


def test_an_admin_uploads_a_blob_that_ollama_then_has(
    gate: GatewayProcess, module_ollama_server: FakeOllamaServer
) -> None:
    digest = "sha256:" + "3" * 64
    blob = gate.url + "/api/blobs/" + digest

    before = httpx.head(blob)
    uploaded = httpx.post(blob, content=iter([b"GGUF", b"\x00" * 100_000]))
    after = httpx.head(blob)

    assert (before.status_code, uploaded.status_code, after.status_code) == (404, 201, 200)
    assert digest in module_ollama_server.blobs


# Listings have a quota of their own: 10 a minute here, far below the chat quota.
listing_gate = gateway_per_module(ROOMY | {"LISTING_RATE_LIMIT": "10/60"}, upstream="module_ollama_server")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("POST", "/api/show", {"model": MODEL}), ("GET", "/api/tags", None), ("GET", "/v1/models", None)],
)
def test_listing_paths_cannot_be_used_to_flood_ollama(
    listing_gate: GatewayProcess,
    module_ollama_server: FakeOllamaServer,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    """The audit forwarded 40 of 40 `/api/show` calls for an anonymous caller whose chat quota was 10."""
    address = {"/api/show": "127.0.2.1", "/api/tags": "127.0.2.2", "/v1/models": "127.0.2.3"}[path]
    upstream_path = "/api/show" if path == "/api/show" else path
    before = module_ollama_server.count(upstream_path, method)
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10) as client:
        statuses = [client.request(method, listing_gate.url + path, json=body).status_code for _ in range(40)]
    assert statuses == [200] * 10 + [429] * 30
    assert module_ollama_server.count(upstream_path, method) - before == 10
