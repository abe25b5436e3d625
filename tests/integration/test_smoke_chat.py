from __future__ import annotations

import httpx

from tests.support.gateway import GatewayProcess


def test_chat_answers_with_the_upstream_response(gateway: GatewayProcess) -> None:
    response = httpx.post(gateway.url + "/chat", json={"message": "what is ml"}, timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["user"] == "anonymous" and body["tier"] == "anonymous"
    assert body["response"]["response"] == "Echo: what is ml"
    assert "context" not in body["response"]
