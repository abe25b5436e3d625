"""Per-tier quotas on the real gateway: default limits, headers, client identity, proxies, concurrency."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import httpx
import pytest

from tests.integration.conftest import gateway_per_module
from tests.support.fake_ollama import FakeOllama
from tests.support.gateway import GatewayProcess

RATE_LIMIT = re.compile(r'"(?P<name>\w+)";r=(?P<remaining>\d+);t=(?P<reset>\d+)')
ANON_EXCEEDED = "rate limit exceeded: 10 requests per 60s for anonymous clients"
MEMBER_EXCEEDED = "rate limit exceeded: 30 requests per 60s for member clients"


def client_from(address: str) -> httpx.Client:
    """A client whose connections leave from `address` (any of 127.0.0.0/8 is this machine)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def chat(
    client: httpx.Client, gate: GatewayProcess, headers: dict[str, str] | None = None, endpoint: str = "/chat"
) -> httpx.Response:
    return client.post(gate.url + endpoint, json={"message": "count me"}, headers=headers or {})


def assert_quota_headers(response: httpx.Response, tier: str, limit: int, remaining: int) -> int:
    """The IETF and legacy headers agree with each other and with `remaining`; returns the reset."""
    headers = response.headers
    assert headers["RateLimit-Policy"] == f'"{tier}";q={limit};w=60'
    parsed = RATE_LIMIT.fullmatch(headers["RateLimit"])
    assert parsed is not None, headers["RateLimit"]
    assert (parsed["name"], int(parsed["remaining"])) == (tier, remaining)
    assert headers["X-RateLimit-Limit"] == str(limit)
    assert headers["X-RateLimit-Remaining"] == str(remaining)
    assert headers["X-RateLimit-Reset"] == parsed["reset"]
    reset = int(parsed["reset"])
    assert 0 <= reset <= 60
    return reset


def assert_rate_limited(response: httpx.Response, tier: str, limit: int, detail: str) -> None:
    assert response.status_code == 429, response.text
    reset = assert_quota_headers(response, tier, limit, remaining=0)
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert retry_after == reset
    assert response.json() == {"detail": detail, "retry_after": retry_after}


# -- the defaults -------------------------------------------------------------------------------------


def test_anonymous_callers_get_10_requests_then_429_with_headers(gateway: GatewayProcess) -> None:
    with client_from("127.0.0.1") as client:
        # A streamed request takes one slot like a JSON one.
        admitted = [chat(client, gateway, endpoint="/chat" if i % 2 else "/chat/stream") for i in range(10)]
        refused = [chat(client, gateway) for _ in range(3)]

    for index, response in enumerate(admitted):
        assert response.status_code == 200, response.text
        assert_quota_headers(response, "anonymous", 10, remaining=9 - index)
    for response in refused:
        assert_rate_limited(response, "anonymous", 10, ANON_EXCEEDED)


def test_a_refused_stream_is_a_plain_429(gateway: GatewayProcess) -> None:
    with client_from("127.0.0.1") as client:
        for _ in range(10):
            assert chat(client, gateway).status_code == 200
        refused = chat(client, gateway, endpoint="/chat/stream")

    assert_rate_limited(refused, "anonymous", 10, ANON_EXCEEDED)
    assert refused.headers["content-type"].startswith("application/json")


def test_members_get_30_requests_independent_of_the_anonymous_quota(gateway: GatewayProcess) -> None:
    first, second = gateway.create_key("quota-user")["key"], gateway.create_key("quota-user")["key"]
    other = gateway.create_key("another-user")["key"]
    with client_from("127.0.0.1") as client:
        anonymous = [chat(client, gateway) for _ in range(11)]
        # All keys of one user share one quota: alternate between its two keys.
        member = [chat(client, gateway, {"X-API-Key": first if i % 2 else second}) for i in range(31)]
        bearer_refused = chat(client, gateway, {"Authorization": f"Bearer {first}"})
        other_user = chat(client, gateway, {"X-API-Key": other})
        anonymous_after = chat(client, gateway)

    assert [r.status_code for r in anonymous] == [200] * 10 + [429]
    for index, response in enumerate(member[:30]):
        assert response.status_code == 200, response.text
        assert response.json()["user"] == "quota-user"
        assert_quota_headers(response, "member", 30, remaining=29 - index)
    assert_rate_limited(member[30], "member", 30, MEMBER_EXCEEDED)
    assert_rate_limited(bearer_refused, "member", 30, MEMBER_EXCEEDED)
    assert other_user.status_code == 200  # each user has a quota of its own
    assert_rate_limited(anonymous_after, "anonymous", 10, ANON_EXCEEDED)


def test_a_bad_key_is_401_even_when_the_quota_is_used_up(gateway: GatewayProcess) -> None:
    key = gateway.create_key("exhausted")["key"]
    doomed = gateway.create_key("exhausted")
    assert httpx.delete(f"{gateway.url}/api/keys/{doomed['id']}", timeout=10).status_code == 200
    with client_from("127.0.0.1") as client:
        for _ in range(10):
            chat(client, gateway)
        for _ in range(30):
            chat(client, gateway, {"X-API-Key": key})
        assert chat(client, gateway).status_code == 429
        assert chat(client, gateway, {"X-API-Key": key}).status_code == 429

        unknown = chat(client, gateway, {"X-API-Key": "oa-" + "q" * 43})
        malformed = chat(client, gateway, {"Authorization": "Bearer nope"})
        revoked = chat(client, gateway, {"X-API-Key": doomed["key"]})

    for response in (unknown, malformed, revoked):
        assert response.status_code == 401, response.text
        assert "Retry-After" not in response.headers


# -- client identity: addresses and proxies -----------------------------------------------------------


TRUSTED = "127.0.0.5,10.0.0.0/8,2001:db8:ffff::/48"

# No trusted proxies (the default); a small anonymous quota.
direct = gateway_per_module({"ANON_RATE_LIMIT": "3/60"})
# 127.0.0.5 and 10.0.0.0/8 are trusted proxies that set X-Forwarded-For; a small anonymous quota.
proxied = gateway_per_module({"ANON_RATE_LIMIT": "3/60", "TRUSTED_PROXIES": TRUSTED})
# The same proxies, setting `Forwarded` (RFC 7239) instead.
proxied_rfc7239 = gateway_per_module(
    {"ANON_RATE_LIMIT": "3/60", "TRUSTED_PROXIES": TRUSTED, "FORWARDED_HEADER": "forwarded"}
)


def statuses(
    client: httpx.Client, gate: GatewayProcess, count: int, headers: dict[str, str] | None = None
) -> list[int]:
    return [chat(client, gate, headers).status_code for _ in range(count)]


def test_each_client_address_has_its_own_quota(direct: GatewayProcess) -> None:
    with client_from("127.0.0.2") as first, client_from("127.0.0.3") as second:
        first_run = statuses(first, direct, 4)
        second_run = statuses(second, direct, 4)
        first_again = statuses(first, direct, 1)

    assert first_run == [200, 200, 200, 429]
    assert second_run == [200, 200, 200, 429]
    assert first_again == [429]


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded"])
def test_forwarding_headers_from_an_untrusted_peer_change_nothing(
    direct: GatewayProcess, proxied: GatewayProcess, header: str
) -> None:
    address = "127.0.0.4" if header == "X-Forwarded-For" else "127.0.0.14"
    for gate in (direct, proxied):
        with client_from(address) as client:
            spoofed = [
                chat(
                    client,
                    gate,
                    {header: f"203.0.113.{i}" if header == "X-Forwarded-For" else f"for=203.0.113.{i}"},
                )
                for i in range(4)
            ]

        assert [r.status_code for r in spoofed] == [200, 200, 200, 429]
    assert usage_client_ips(proxied, {address}) == Counter({address: 3})


def usage_client_ips(gate: GatewayProcess, addresses: set[str]) -> Counter[str]:
    """How many usage rows each of `addresses` has (rows of other clients are left out)."""
    rows = gate.usage_rows(gate.status()["usage"]["total_requests"])
    return Counter(row["client_ip"] for row in rows if row["client_ip"] in addresses)


def test_a_trusted_proxy_chain_names_the_right_most_untrusted_address(
    proxied: GatewayProcess, proxied_rfc7239: GatewayProcess
) -> None:
    chains = {
        # left-most entries are whatever the client claimed; the first untrusted hop from the right wins
        "203.0.113.7, 10.1.2.3": "203.0.113.7",
        "198.51.100.66, 203.0.113.8": "203.0.113.8",
        "203.0.113.9": "203.0.113.9",
        "::ffff:203.0.113.11": "203.0.113.11",  # one spelling per address
    }
    forwarded = {
        'for=198.51.100.1, for="[2001:db8::1]:4711", for=10.0.0.9': "2001:db8::1",
        "for=203.0.113.10;proto=https": "203.0.113.10",
    }
    with client_from("127.0.0.5") as proxy:
        for chain in chains:
            assert chat(proxy, proxied, {"X-Forwarded-For": chain}).status_code == 200
        for chain in forwarded:
            assert chat(proxy, proxied_rfc7239, {"Forwarded": chain}).status_code == 200

    assert usage_client_ips(proxied, set(chains.values())) == Counter(chains.values())
    assert usage_client_ips(proxied_rfc7239, set(forwarded.values())) == Counter(forwarded.values())


def test_only_the_configured_forwarding_header_is_believed(proxied: GatewayProcess) -> None:
    """Behind a proxy that sets X-Forwarded-For, a client's own `Forwarded` (or X-Real-IP) header rides
    through untouched; it must not name the client (the audit got 15 of 15 through a quota of 10)."""
    with client_from("127.0.0.5") as client_behind_proxy:
        forged = [
            chat(
                client_behind_proxy,
                proxied,
                {
                    "X-Forwarded-For": "198.51.100.30",
                    "Forwarded": f"for=203.0.113.{i}",
                    "X-Real-IP": f"203.0.114.{i}",
                },
            ).status_code
            for i in range(5)
        ]
    assert forged == [200, 200, 200, 429, 429]  # one client, 198.51.100.30, with a quota of 3
    assert usage_client_ips(proxied, {"198.51.100.30"}) == Counter({"198.51.100.30": 3})


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_quota(proxied: GatewayProcess) -> None:
    with client_from("127.0.0.5") as proxy:
        alice = statuses(proxy, proxied, 4, {"X-Forwarded-For": "198.51.100.20, 10.0.0.2"})
        # The same client behind a claim it cannot forge past the proxy.
        alice_spoofing = statuses(proxy, proxied, 1, {"X-Forwarded-For": "192.0.2.1, 198.51.100.20"})
        bob = statuses(proxy, proxied, 4, {"X-Forwarded-For": "198.51.100.21"})
        # The proxy's own requests (no header) are its own identity.
        direct_from_proxy = statuses(proxy, proxied, 1)

    assert alice == [200, 200, 200, 429]
    assert alice_spoofing == [429]
    assert bob == [200, 200, 200, 429]
    assert direct_from_proxy == [200]
    assert usage_client_ips(proxied, {"198.51.100.20", "198.51.100.21", "127.0.0.5"}) == Counter(
        {"198.51.100.20": 3, "198.51.100.21": 3, "127.0.0.5": 1}
    )


# -- concurrency --------------------------------------------------------------------------------------


async def burst(gate: GatewayProcess, count: int, headers: dict[str, str], address: str) -> Counter[int]:
    """`count` requests at once from one identity; the tally of their statuses."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    transport = httpx.AsyncHTTPTransport(local_address=address, limits=limits)
    async with httpx.AsyncClient(transport=transport, timeout=30) as client:
        start = asyncio.Event()

        async def one(index: int) -> int:
            await start.wait()
            endpoint = "/chat/stream" if index % 2 else "/chat"
            response = await client.post(gate.url + endpoint, json={"message": "race"}, headers=headers)
            return response.status_code

        tasks = [asyncio.create_task(one(i)) for i in range(count)]
        await asyncio.sleep(0)  # every task is now waiting on the same start signal
        start.set()
        return Counter(await asyncio.gather(*tasks))


async def test_200_simultaneous_requests_from_one_identity_admit_exactly_the_limit(
    tmp_path_factory: pytest.TempPathFactory, module_ollama: FakeOllama
) -> None:
    # The GPU queue's per-identity cap (8 waiting by default) would bound a burst of one identity
    # itself, by design; out of its way here, where the quota's exactness is what is tested.
    env = {"ANON_RATE_LIMIT": "20/60", "MEMBER_RATE_LIMIT": "25/60", "MAX_QUEUED_PER_IDENTITY": "1000"}
    upstream_before = len(module_ollama.seen.generate_requests)
    with GatewayProcess(tmp_path_factory.mktemp("burst"), ollama_url=module_ollama.url, env=env) as gate:
        key = gate.create_key("bursty")["key"]
        anonymous = await burst(gate, 200, {}, "127.0.0.21")
        member = await burst(gate, 200, {"X-API-Key": key}, "127.0.0.22")

    assert anonymous == Counter({200: 20, 429: 180})
    assert member == Counter({200: 25, 429: 175})
    assert len(module_ollama.seen.generate_requests) - upstream_before == 45
