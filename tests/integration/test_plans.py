"""Plans on the real gateway, with a fake Ollama that records what it received: every field, a key's
plan beside its user's, /api/me, listings, the API's answers, and the CLI."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.integration.conftest import gateway_per_module
from tests.support.fake_ollama_openai import FakeOllamaServer
from tests.support.gateway import GatewayProcess

MODEL = "smollm:latest"
ADMIN_TOKEN = "plans-admin-token"
ADMIN = {"X-Admin-Token": ADMIN_TOKEN}

gate = gateway_per_module(
    {"ADMIN_TOKEN": ADMIN_TOKEN, "ANON_RATE_LIMIT": "1000/60", "MEMBER_RATE_LIMIT": "1000/60"},
    upstream="module_ollama_server",
)


def put_plan(gate: GatewayProcess, name: str, **fields: Any) -> dict[str, Any]:
    response = httpx.put(f"{gate.url}/api/plans/{name}", json=fields, headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    plan: dict[str, Any] = response.json()
    return plan


def member_on(gate: GatewayProcess, name: str, **fields: Any) -> dict[str, str]:
    """The headers of a fresh member on a fresh plan `name` with `fields`."""
    put_plan(gate, name, **fields)
    user = f"user-{uuid.uuid4().hex[:8]}"
    assert httpx.put(
        f"{gate.url}/api/users/{user}", json={"plan": name}, headers=ADMIN, timeout=10
    ).json() == {
        "user_id": user,
        "plan": name,
    }
    return {"X-API-Key": gate.create_key(user, headers=ADMIN)["key"]}


def generate(gate: GatewayProcess, headers: dict[str, str], prompt: str, **fields: Any) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "stream": False, **fields}
    return httpx.post(gate.url + "/api/generate", json=body, headers=headers, timeout=10)


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


# -- the API ---------------------------------------------------------------------------------------------


def test_a_plan_is_stored_and_shown_with_every_field(gate: GatewayProcess) -> None:
    fields = {
        "requests": "60/60",
        "tokens": "20000/60",
        "daily_tokens": 500000,
        "concurrency": 4,
        "models": ["llama3.2:*", MODEL],
        "max_context": 8192,
        "max_output": 1024,
        "max_keep_alive": "10m",
        "priority": 3,
        "weight": 2,
        "queue_timeout": 30,
    }
    stored = put_plan(gate, "gold", **fields)
    expected = {"name": "gold", **fields, "max_keep_alive": 600.0, "weight": 2.0, "queue_timeout": 30.0}
    assert stored == expected
    assert httpx.get(gate.url + "/api/plans/gold", headers=ADMIN).json() == expected
    listed = httpx.get(gate.url + "/api/plans", headers=ADMIN).json()["plans"]
    assert [p["name"] for p in listed][:3] == ["anonymous", "member", "admin"]
    assert expected in listed
    patched = httpx.patch(gate.url + "/api/plans/gold", json={"tokens": None, "priority": 1}, headers=ADMIN)
    assert patched.status_code == 200 and patched.json() == expected | {"tokens": None, "priority": 1}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "detail"),
    [
        ("PUT", "/api/plans/bad", {"tokens": "lots"}, 400, r"^tokens: "),
        ("PUT", "/api/plans/bad", {"concurrency": 0}, 400, r"^concurrency: "),
        ("PUT", "/api/plans/bad", {"requestz": "1/60"}, 400, r"^requestz: not a plan field"),
        ("PUT", "/api/plans/bad name", {}, 400, "plan name"),
        ("PATCH", "/api/plans/nothing-here", {"requests": "1/60"}, 404, "plan 'nothing-here' not found"),
        ("GET", "/api/plans/nothing-here", None, 404, "not found"),
        ("DELETE", "/api/plans/nothing-here", None, 404, "not found"),
        ("DELETE", "/api/plans/member", None, 409, "built in"),
        ("PUT", "/api/users/someone", {"plan": "platinum"}, 404, "plan 'platinum' not found"),
        ("PUT", "/api/users/someone", {"plan": 7}, 400, "plan"),
        ("PUT", "/api/users/anonymous", {"plan": "member"}, 400, "reserved"),
        ("GET", "/api/users/nobody-at-all", None, 404, "not found"),
        ("POST", "/api/keys?user_id=x&plan=platinum", None, 404, "plan 'platinum' not found"),
    ],
)
def test_the_api_says_what_is_wrong(
    gate: GatewayProcess, method: str, path: str, body: Any, status: int, detail: str
) -> None:
    response = httpx.request(method, gate.url + path, json=body, headers=ADMIN, timeout=10)
    assert response.status_code == status, response.text
    assert re.search(detail, response.json()["detail"])


def test_only_admins_manage_plans(gate: GatewayProcess) -> None:
    key = gate.create_key("not-an-admin", headers=ADMIN)["key"]
    for headers in ({}, {"X-API-Key": key}):
        for method, path in (("GET", "/api/plans"), ("PUT", "/api/plans/mine"), ("GET", "/api/users")):
            response = httpx.request(method, gate.url + path, json={}, headers=headers, timeout=10)
            assert response.status_code == 403, (method, path, response.text)


def test_a_plan_in_use_cannot_be_deleted_until_nobody_is_on_it(gate: GatewayProcess) -> None:
    headers = member_on(gate, "doomed", requests="5/60")
    refused = httpx.delete(gate.url + "/api/plans/doomed", headers=ADMIN)
    assert refused.status_code == 409 and "in use by 1 user" in refused.json()["detail"]
    user = httpx.get(gate.url + "/api/me", headers=headers).json()["user"]
    httpx.put(f"{gate.url}/api/users/{user}", json={"plan": "member"}, headers=ADMIN)
    assert httpx.delete(gate.url + "/api/plans/doomed", headers=ADMIN).json() == {
        "name": "doomed",
        "deleted": True,
    }


def test_users_list_their_plan_and_active_keys(gate: GatewayProcess) -> None:
    gate.create_key("lister-a", headers=ADMIN)
    gate.create_key("lister-a", headers=ADMIN)
    users = {u["user_id"]: u for u in httpx.get(gate.url + "/api/users", headers=ADMIN).json()["users"]}
    assert users["lister-a"] == {"user_id": "lister-a", "plan": "member", "keys": 2}
    assert httpx.get(gate.url + "/api/users/lister-a", headers=ADMIN).json() == users["lister-a"]


# -- each field, as Ollama sees it ----------------------------------------------------------------------


def test_requests_window_with_its_own_429(gate: GatewayProcess) -> None:
    headers = member_on(gate, "tiny", requests="2/60")
    statuses = [generate(gate, headers, "hi") for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    refused = statuses[2]
    assert refused.json()["error"] == "rate limit exceeded: 2 requests per 60s for tiny clients"
    assert refused.headers["RateLimit-Policy"] == '"tiny";q=2;w=60'
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


def test_tokens_are_charged_from_what_ollama_counted(
    gate: GatewayProcess, module_ollama_server: FakeOllamaServer
) -> None:
    headers = member_on(gate, "tokens-20", tokens="20/60")
    first = generate(gate, headers, "one two three four five six seven eight")  # 8 prompt + ~10 output
    assert first.status_code == 200
    used = first.json()["prompt_eval_count"] + first.json()["eval_count"]
    second = generate(gate, headers, "one two")
    if used < 20:
        assert second.status_code == 200
        second = generate(gate, headers, "again")
    assert second.status_code == 429, second.text
    assert second.json()["error"] == "token quota exceeded: 20 tokens per 60s on plan 'tokens-20'"
    assert '"tokens-20-tokens";q=20;w=60' in second.headers["RateLimit-Policy"]


def test_daily_tokens(gate: GatewayProcess) -> None:
    headers = member_on(gate, "daily-5", daily_tokens=5)
    assert generate(gate, headers, "a b c d e f").status_code == 200
    refused = generate(gate, headers, "again")
    assert refused.status_code == 429
    assert refused.json()["error"] == "daily token quota exceeded: 5 tokens per 24h on plan 'daily-5'"


def test_concurrency_refuses_one_more_at_once_with_retry_after_1(
    gate: GatewayProcess, module_ollama_server: FakeOllamaServer
) -> None:
    headers = member_on(gate, "single", concurrency=1)
    with httpx.Client(timeout=httpx.Timeout(10, read=0.5)) as slow:
        prompt = unique("!hang")
        with pytest.raises(httpx.ReadTimeout):  # holds the one slot until it leaves
            slow.post(gate.url + "/api/generate", json={"model": MODEL, "prompt": prompt}, headers=headers)
    # Its client left: the lease is back.
    assert module_ollama_server.wait_until(lambda: prompt in module_ollama_server.seen.abandoned)
    assert generate(gate, headers, "free again").status_code == 200


def test_concurrency_while_a_request_is_in_flight(gate: GatewayProcess) -> None:
    headers = member_on(gate, "single-b", concurrency=1)
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", gate.url + "/api/generate", json={"model": MODEL, "prompt": "!long"}, headers=headers
        ) as streaming,
    ):
        assert streaming.status_code == 200
        refused = generate(gate, headers, "one more")
        me = httpx.get(gate.url + "/api/me", headers=headers).json()
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert refused.json()["error"] == "too many concurrent requests: at most 1 at once on plan 'single-b'"
    assert me["in_flight"] == 1


def test_models_outside_the_plan_are_403_and_listings_show_only_the_plans_models(
    gate: GatewayProcess,
) -> None:
    headers = member_on(gate, "smol-only", models=["smollm:*"])
    refused = generate(gate, headers, "hi", model="llama3.2:1b")
    assert refused.status_code == 403
    assert refused.json() == {"error": "model 'llama3.2:1b' is not available on plan 'smol-only'"}
    openai = httpx.post(
        gate.url + "/v1/chat/completions",
        json={"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
    )
    assert openai.status_code == 403 and openai.json()["error"]["code"] == "permission_denied"
    assert generate(gate, headers, "hi").status_code == 200
    tags = httpx.get(gate.url + "/api/tags", headers=headers).json()["models"]
    models = httpx.get(gate.url + "/v1/models", headers=headers).json()["data"]
    ps = httpx.get(gate.url + "/api/ps", headers=headers).json()["models"]
    assert [m["name"] for m in tags] == [MODEL] and [m["id"] for m in models] == [MODEL]
    assert [m["name"] for m in ps] == [MODEL]
    everyone = httpx.get(gate.url + "/api/tags").json()["models"]
    assert len(everyone) > 1  # the anonymous plan lists no models: it sees them all


def test_ceilings_lower_what_ollama_is_sent(
    gate: GatewayProcess, module_ollama_server: FakeOllamaServer
) -> None:
    headers = member_on(gate, "ceilings", max_context=4096, max_output=128, max_keep_alive="5m")
    prompt = unique("ceiling")
    body = {"options": {"num_ctx": 1048576, "temperature": 0.2}, "keep_alive": -1}
    assert generate(gate, headers, prompt, **body).status_code == 200
    [sent] = module_ollama_server.bodies("/api/generate", prompt)
    assert sent["options"] == {"num_ctx": 4096, "temperature": 0.2, "num_predict": 128}
    assert sent["keep_alive"] == 300
    chat_prompt = unique("openai ceiling")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": chat_prompt}], "max_tokens": 5000}
    assert httpx.post(gate.url + "/v1/chat/completions", json=chat, headers=headers).status_code == 200
    [sent_chat] = module_ollama_server.bodies("/v1/chat/completions", chat_prompt)
    assert sent_chat["max_tokens"] == 128


def test_a_body_with_nothing_to_lower_reaches_ollama_byte_for_byte(
    gate: GatewayProcess, module_ollama_server: FakeOllamaServer
) -> None:
    headers = member_on(gate, "roomy", max_context=8192, max_keep_alive=600)
    prompt = unique("untouched")
    raw = json.dumps(
        {"model": MODEL, "prompt": prompt, "stream": False, "options": {"num_ctx": 2048}},
        separators=(", ", " : "),
    ).encode()
    answer = httpx.post(
        gate.url + "/api/generate", content=raw, headers=headers | {"Content-Type": "application/json"}
    )
    assert answer.status_code == 200
    assert module_ollama_server.raw_bodies("/api/generate", prompt) == [raw]


# -- whose plan, and what is left -----------------------------------------------------------------------


def test_a_key_plan_beside_its_users_plan(gate: GatewayProcess) -> None:
    put_plan(gate, "ci-bot", requests="1/60")
    put_plan(gate, "team", requests="100/60")
    httpx.put(gate.url + "/api/users/keyholder", json={"plan": "team"}, headers=ADMIN)
    own = {"X-API-Key": gate.create_key("keyholder", headers=ADMIN)["key"]}
    created = httpx.post(
        gate.url + "/api/keys", params={"user_id": "keyholder", "plan": "ci-bot"}, headers=ADMIN
    ).json()
    assert created["plan"] == "ci-bot"
    bot = {"X-API-Key": created["key"]}
    assert [generate(gate, bot, "bot").status_code for _ in range(2)] == [200, 429]
    assert [generate(gate, own, "me").status_code for _ in range(3)] == [200, 200, 200]
    assert httpx.get(gate.url + "/api/me", headers=bot).json()["plan"]["name"] == "ci-bot"
    assert httpx.get(gate.url + "/api/me", headers=own).json()["plan"]["name"] == "team"
    rows = gate.usage_rows(5, user_id="keyholder", headers=ADMIN)
    assert sorted(row["plan"] for row in rows) == ["ci-bot", "team", "team", "team"]


def test_me_says_who_you_are_and_what_you_have_left(gate: GatewayProcess) -> None:
    headers = member_on(gate, "me-plan", requests="10/60", tokens="1000/60", daily_tokens=5000)
    generate(gate, headers, "one two three")
    time.sleep(0.2)  # the charge lands behind the answer
    me = httpx.get(gate.url + "/api/me", headers=headers).json()
    assert me["tier"] == "member" and me["plan"]["name"] == "me-plan"
    assert me["remaining"]["requests"] == 9
    assert 900 < me["remaining"]["tokens"] < 1000
    assert 4900 < me["remaining"]["daily_tokens"] < 5000
    assert me["in_flight"] == 0
    anonymous = httpx.get(gate.url + "/api/me").json()
    assert (anonymous["user"], anonymous["tier"], anonymous["plan"]["name"]) == (
        "anonymous",
        "anonymous",
        "anonymous",
    )
    assert anonymous["remaining"] == {
        "requests": anonymous["remaining"]["requests"],
        "tokens": None,
        "daily_tokens": None,
    }
    admin = httpx.get(gate.url + "/api/me", headers=ADMIN).json()
    assert (admin["user"], admin["tier"], admin["remaining"]) == (
        "admin",
        "admin",
        {"requests": None, "tokens": None, "daily_tokens": None},
    )


def test_chat_answers_name_the_plan(gate: GatewayProcess) -> None:
    headers = member_on(gate, "named")
    answer = httpx.post(gate.url + "/chat", json={"message": "hi"}, headers=headers).json()
    assert (answer["tier"], answer["plan"]) == ("member", "named")


def test_the_status_shows_the_built_in_plans_in_force(gate: GatewayProcess) -> None:
    status = gate.status()
    assert status["usage"]["anon_rate_limit"] == "1000 req / 60s"
    assert status["plans"]["member"]["requests"] == "1000/60"
    assert status["plans"]["anonymous"]["source"] in ("environment", "stored")


# -- the CLI, on the same database ----------------------------------------------------------------------


def test_the_cli_sets_plans_that_the_running_gateway_applies(gate: GatewayProcess) -> None:
    made = gate.run_cli("plans", "set", "cli-plan", "--requests", "1/60", "--models", "smollm:*,qwen*")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["models"] == ["smollm:*", "qwen*"]
    assigned = gate.run_cli("users", "set-plan", "cli-user", "cli-plan")
    assert assigned.returncode == 0 and json.loads(assigned.stdout) == {
        "user_id": "cli-user",
        "plan": "cli-plan",
    }
    headers = {"X-API-Key": gate.create_key("cli-user", headers=ADMIN)["key"]}
    deadline = time.monotonic() + 3
    while httpx.get(gate.url + "/api/me", headers=headers).json()["plan"]["name"] != "cli-plan":
        assert time.monotonic() < deadline, "the running gateway never saw the CLI's plan"
        time.sleep(0.1)
    assert [generate(gate, headers, "cli").status_code for _ in range(2)] == [200, 429]
    changed = gate.run_cli("plans", "set", "cli-plan", "--requests", "none")
    assert json.loads(changed.stdout)["requests"] is None
    listed = json.loads(gate.run_cli("plans", "list").stdout)["plans"]
    assert "cli-plan" in [p["name"] for p in listed]
    refused = gate.run_cli("plans", "delete", "cli-plan")
    assert refused.returncode == 1 and "in use" in refused.stderr
