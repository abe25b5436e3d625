"""The gatekeeper: who the caller is, then whether its quota has room; rejections are counted."""

from __future__ import annotations

import pytest

from ollama_gate.adapters.memory_ratelimit import InMemoryRateLimiter
from ollama_gate.adapters.memory_stores import InMemoryKeyStore
from ollama_gate.domain.errors import RateLimited, StoreUnavailable
from ollama_gate.domain.identity import Caller, Tier
from ollama_gate.domain.keys import InvalidCredentials
from ollama_gate.domain.ratelimit import RateLimit
from ollama_gate.services.authenticator import Authenticator
from ollama_gate.services.gatekeeper import Gatekeeper
from ollama_gate.services.keys import KeyService
from tests.unit.conftest import ANONYMOUS_RATE, MEMBER_RATE
from tests.unit.fakes import FakeClock


async def admitted(gatekeeper: Gatekeeper, caller: Caller, attempts: int) -> int:
    count = 0
    for _ in range(attempts):
        try:
            await gatekeeper.admit(caller)
        except RateLimited:
            continue
        count += 1
    return count


async def test_no_key_is_anonymous_per_address(gatekeeper: Gatekeeper) -> None:
    caller = await gatekeeper.identify(None, None, "203.0.113.7")
    assert caller == Caller("anonymous", Tier.ANONYMOUS, None, "203.0.113.7")
    assert gatekeeper.quota_identity(caller) == "ip:203.0.113.7"
    assert gatekeeper.rate_for(caller) == ANONYMOUS_RATE


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
async def test_a_key_makes_a_member(gatekeeper: Gatekeeper, key_service: KeyService, style: str) -> None:
    issued = await key_service.create("alice", None)
    if style == "x-api-key":
        caller = await gatekeeper.identify(issued.secret, None, "203.0.113.7")
    else:
        caller = await gatekeeper.identify(None, f"Bearer {issued.secret}", "203.0.113.7")
    assert caller == Caller("alice", Tier.MEMBER, issued.key.id, "203.0.113.7")
    assert gatekeeper.rate_for(caller) == MEMBER_RATE


@pytest.mark.parametrize(
    ("x_api_key", "authorization"),
    [("oa-" + "u" * 43, None), ("garbage", None), (None, "Bearer "), (None, "Basic abc"), ("", None)],
)
async def test_a_wrong_credential_is_401_and_counted(
    gatekeeper: Gatekeeper, x_api_key: str | None, authorization: str | None
) -> None:
    with pytest.raises(InvalidCredentials):
        await gatekeeper.identify(x_api_key, authorization, "203.0.113.7")
    assert gatekeeper.rejections.unauthorized == 1
    assert gatekeeper.rejections.rate_limited == 0


async def test_a_revoked_key_is_401_never_anonymous(gatekeeper: Gatekeeper, key_service: KeyService) -> None:
    issued = await key_service.create("alice", None)
    await key_service.revoke(issued.key.id, None)
    with pytest.raises(InvalidCredentials):
        await gatekeeper.identify(issued.secret, None, "203.0.113.7")
    assert gatekeeper.rejections.unauthorized == 1


async def test_a_store_outage_is_not_counted_as_unauthorized(
    gatekeeper: Gatekeeper, key_service: KeyService, key_store: InMemoryKeyStore
) -> None:
    issued = await key_service.create("alice", None)
    key_store.available = False
    with pytest.raises(StoreUnavailable):
        await gatekeeper.identify(issued.secret, None, "203.0.113.7")
    assert gatekeeper.rejections.unauthorized == 0
    assert (await gatekeeper.identify(None, None, "203.0.113.7")).tier is Tier.ANONYMOUS


async def test_the_quota_then_429_counted(gatekeeper: Gatekeeper, clock: FakeClock) -> None:
    caller = Caller.anonymous("203.0.113.7")
    decisions = [await gatekeeper.admit(caller) for _ in range(ANONYMOUS_RATE.limit)]
    assert [d.remaining if d else None for d in decisions] == [2, 1, 0]
    clock.advance(15)
    with pytest.raises(RateLimited) as raised:
        await gatekeeper.admit(caller)
    assert raised.value.status == 429
    assert raised.value.decision.retry_after == 45
    assert raised.value.detail == "rate limit exceeded: 3 requests per 60s for anonymous clients"
    assert gatekeeper.rejections.rate_limited == 1
    assert gatekeeper.rejections.unauthorized == 0


async def test_anonymous_addresses_have_separate_quotas(gatekeeper: Gatekeeper) -> None:
    assert await admitted(gatekeeper, Caller.anonymous("10.0.0.1"), 10) == 3
    assert await admitted(gatekeeper, Caller.anonymous("10.0.0.2"), 10) == 3
    assert gatekeeper.rejections.rate_limited == 14


async def test_all_keys_of_a_user_share_one_quota(gatekeeper: Gatekeeper, key_service: KeyService) -> None:
    laptop = await key_service.create("alice", "laptop")
    phone = await key_service.create("alice", "phone")
    callers = [
        await gatekeeper.identify(laptop.secret, None, "10.0.0.1"),
        await gatekeeper.identify(None, f"Bearer {phone.secret}", "10.0.0.2"),
    ]
    results = [await admitted(gatekeeper, callers[n % 2], 1) for n in range(12)]
    assert sum(results) == MEMBER_RATE.limit
    bob = await gatekeeper.identify((await key_service.create("bob", None)).secret, None, "10.0.0.1")
    assert await admitted(gatekeeper, bob, 12) == MEMBER_RATE.limit


async def test_member_and_anonymous_quotas_are_independent(
    gatekeeper: Gatekeeper, key_service: KeyService
) -> None:
    """A member using up its quota leaves the anonymous quota of its address untouched, and back."""
    alice = await gatekeeper.identify((await key_service.create("alice", None)).secret, None, "10.0.0.1")
    anonymous = await gatekeeper.identify(None, None, "10.0.0.1")
    assert await admitted(gatekeeper, anonymous, 10) == ANONYMOUS_RATE.limit
    assert await admitted(gatekeeper, alice, 10) == MEMBER_RATE.limit
    assert await gatekeeper.active_anonymous_identities() == 1


async def test_active_anonymous_identities_counts_addresses_inside_the_window(
    gatekeeper: Gatekeeper, clock: FakeClock
) -> None:
    for n in range(4):
        await gatekeeper.admit(Caller.anonymous(f"10.0.0.{n}"))
    await gatekeeper.admit(Caller.member("alice", 1, "10.0.0.9"))
    assert await gatekeeper.active_anonymous_identities() == 4
    clock.advance(60)
    assert await gatekeeper.active_anonymous_identities() == 0


ADMIN_TOKEN = "correct-horse-battery-staple"


@pytest.fixture
def guarded(authenticator: Authenticator, limiter: InMemoryRateLimiter) -> Gatekeeper:
    """A gatekeeper with an admin token and a listing quota of 2 per minute."""
    return Gatekeeper(
        authenticator,
        limiter,
        ANONYMOUS_RATE,
        MEMBER_RATE,
        admin_token=ADMIN_TOKEN,
        listing_rate=RateLimit("listing", 2, 60),
    )


@pytest.mark.parametrize(
    ("authorization", "x_admin_token"), [(f"Bearer {ADMIN_TOKEN}", None), (None, ADMIN_TOKEN)]
)
async def test_the_admin_token_makes_the_admin_caller_who_has_no_quota(
    guarded: Gatekeeper, authorization: str | None, x_admin_token: str | None
) -> None:
    caller = await guarded.identify(None, authorization, "203.0.113.7", x_admin_token)
    assert caller == Caller("admin", Tier.ADMIN, None, "203.0.113.7")
    assert [await guarded.admit(caller) for _ in range(3 * ANONYMOUS_RATE.limit)] == [None] * 9
    assert await guarded.admit_listing(caller) is None


@pytest.mark.parametrize(
    ("authorization", "x_admin_token"), [("Bearer guess", None), (None, "guess"), (None, "")]
)
async def test_a_wrong_admin_token_is_401_on_inference(
    guarded: Gatekeeper, authorization: str | None, x_admin_token: str | None
) -> None:
    with pytest.raises(InvalidCredentials, match="admin token"):
        await guarded.identify(None, authorization, "203.0.113.7", x_admin_token)
    assert guarded.rejections.unauthorized == 1


async def test_without_a_configured_token_an_admin_token_header_is_a_wrong_credential(
    gatekeeper: Gatekeeper,
) -> None:
    with pytest.raises(InvalidCredentials):
        await gatekeeper.identify(None, None, "127.0.0.1", ADMIN_TOKEN)


async def test_listings_have_a_quota_of_their_own(guarded: Gatekeeper) -> None:
    caller = Caller.anonymous("203.0.113.7")
    await guarded.admit_listing(caller)
    await guarded.admit_listing(caller)
    with pytest.raises(RateLimited):
        await guarded.admit_listing(caller)
    # Listing did not use the chat quota, nor the other way round.
    assert await admitted(guarded, caller, 10) == ANONYMOUS_RATE.limit


async def test_an_ipv6_caller_is_counted_per_slash_64(gatekeeper: Gatekeeper) -> None:
    """One user controls a whole /64: rotating addresses inside it buys nothing."""
    rotating = [Caller.anonymous(f"2001:db8:1:2::{n:x}") for n in range(1, 10)]
    results = [await admitted(gatekeeper, caller, 1) for caller in rotating]
    assert sum(results) == ANONYMOUS_RATE.limit
    assert await admitted(gatekeeper, Caller.anonymous("2001:db8:1:3::1"), 1) == 1


class RecordingCounters:
    def __init__(self) -> None:
        self.added: list[str] = []

    def add(self, name: str) -> None:
        self.added.append(name)

    async def read(self, names: list[str]) -> dict[str, int] | None:
        return None


async def test_rejections_reach_the_shared_counters_without_an_await(
    authenticator: Authenticator, limiter: InMemoryRateLimiter
) -> None:
    counters = RecordingCounters()
    gatekeeper = Gatekeeper(authenticator, limiter, ANONYMOUS_RATE, MEMBER_RATE, shared_counters=counters)
    caller = Caller.anonymous("203.0.113.7")
    await admitted(gatekeeper, caller, 4)
    with pytest.raises(InvalidCredentials):
        await gatekeeper.identify("garbage", None, "203.0.113.7")
    assert counters.added == ["rejected_rate_limited", "rejected_unauthorized"]
    # Unreachable shared counters: the status falls back to this instance's own.
    assert await gatekeeper.rejection_counts() == {"rejected_unauthorized": 1, "rejected_rate_limited": 1}
