"""The gatekeeper: who the caller is and on which plan, then whether the plan's limits have room."""

from __future__ import annotations

import pytest

from ollama_gate.adapters.memory_quota import InMemoryQuotaLimiter
from ollama_gate.adapters.memory_stores import InMemoryKeyStore
from ollama_gate.domain.errors import ModelNotAllowed, StoreUnavailable
from ollama_gate.domain.identity import Caller, Tier
from ollama_gate.domain.keys import InvalidCredentials
from ollama_gate.domain.plans import Window
from ollama_gate.domain.quota import LimitKind, QuotaExceeded
from ollama_gate.domain.usage import TokenCounts
from ollama_gate.services.authenticator import Authenticator
from ollama_gate.services.gatekeeper import Gatekeeper
from ollama_gate.services.keys import KeyService
from ollama_gate.services.plans import PlanBook
from tests.unit.conftest import ANONYMOUS_RATE, MEMBER_RATE
from tests.unit.fakes import FakeClock


async def admitted(gatekeeper: Gatekeeper, caller: Caller, attempts: int) -> int:
    count = 0
    for _ in range(attempts):
        try:
            await gatekeeper.admit(caller)
        except QuotaExceeded:
            continue
        count += 1
    return count


async def refusal(gatekeeper: Gatekeeper, caller: Caller) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as raised:
        await gatekeeper.admit(caller)
    return raised.value


# -- who ------------------------------------------------------------------------------------------------


async def test_no_key_is_anonymous_per_address(gatekeeper: Gatekeeper) -> None:
    caller = await gatekeeper.identify(None, None, "203.0.113.7")
    assert caller == Caller("anonymous", Tier.ANONYMOUS, None, "203.0.113.7", "anonymous", "ip:203.0.113.7")
    assert gatekeeper.plan_of(caller).requests == ANONYMOUS_RATE


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
async def test_a_key_makes_a_member_on_the_member_plan(
    gatekeeper: Gatekeeper, key_service: KeyService, style: str
) -> None:
    issued = await key_service.create("alice", None)
    if style == "x-api-key":
        caller = await gatekeeper.identify(issued.secret, None, "203.0.113.7")
    else:
        caller = await gatekeeper.identify(None, f"Bearer {issued.secret}", "203.0.113.7")
    assert caller == Caller("alice", Tier.MEMBER, issued.key.id, "203.0.113.7", "member", "user:alice")
    assert gatekeeper.plan_of(caller).requests == MEMBER_RATE


async def test_a_user_plan_and_a_key_plan(
    gatekeeper: Gatekeeper, key_service: KeyService, plans: PlanBook
) -> None:
    """A key with a plan of its own follows it and is counted per key, beside its owner's own key."""
    await plans.put("gold", {"requests": "100/60"})
    await plans.put("ci-bot", {"requests": "2/60"})
    await plans.assign("alice", "gold")
    own = await gatekeeper.identify((await key_service.create("alice", "laptop")).secret, None, "10.0.0.1")
    bot_key = await key_service.create("alice", "ci", plan="ci-bot")
    bot = await gatekeeper.identify(bot_key.secret, None, "10.0.0.1")
    assert (own.plan, own.counted_as) == ("gold", "user:alice")
    assert (bot.plan, bot.counted_as) == ("ci-bot", f"key:{bot_key.key.id}")
    assert await admitted(gatekeeper, bot, 5) == 2
    assert await admitted(gatekeeper, own, 5) == 5  # the bot's budget is not its owner's


async def test_a_keys_requests_share_one_caller_until_its_address_or_its_plan_changes(
    gatekeeper: Gatekeeper, key_service: KeyService, plans: PlanBook
) -> None:
    issued = await key_service.create("alice", None)
    first = await gatekeeper.identify(issued.secret, None, "10.0.0.1")
    assert await gatekeeper.identify(issued.secret, None, "10.0.0.1") is first
    elsewhere = await gatekeeper.identify(issued.secret, None, "10.0.0.2")
    assert (elsewhere.client_ip, first.client_ip) == ("10.0.0.2", "10.0.0.1")
    await plans.put("gold", {"requests": "100/60"})
    await plans.assign("alice", "gold")
    moved = await gatekeeper.identify(issued.secret, None, "10.0.0.1")
    assert (moved.plan, moved.counted_as, first.plan) == ("gold", "user:alice", "member")


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


# -- requests ---------------------------------------------------------------------------------------


async def test_the_requests_window_then_429_counted(gatekeeper: Gatekeeper, clock: FakeClock) -> None:
    caller = Caller.anonymous("203.0.113.7")
    tickets = [await gatekeeper.admit(caller) for _ in range(ANONYMOUS_RATE.limit)]
    assert [t.admission.states[0].remaining for t in tickets] == [2, 1, 0]
    clock.advance(15)
    refused = await refusal(gatekeeper, caller)
    assert refused.status == 429
    assert refused.admission.retry_after == 45
    assert refused.detail == "rate limit exceeded: 3 requests per 60s for anonymous clients"
    assert gatekeeper.rejections.rate_limited == 1


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


# -- tokens, concurrency, models --------------------------------------------------------------------------


async def on_plan(plans: PlanBook, name: str, **fields: object) -> Caller:
    await plans.put(name, fields)
    return Caller.member("carol", 3, "10.0.0.3", name)


async def test_tokens_are_charged_when_a_request_ends_and_refuse_once_the_window_holds_n(
    gatekeeper: Gatekeeper, plans: PlanBook, clock: FakeClock
) -> None:
    caller = await on_plan(plans, "tokens", tokens="1000/60")
    first = await gatekeeper.admit(caller)
    second = await gatekeeper.admit(caller)  # the first has not ended: nothing charged yet
    first.end(TokenCounts(200, 500))
    clock.advance(10)
    second.end(TokenCounts(100, 300))  # 1,100 charged: the last admitted request overshot
    refused = await refusal(gatekeeper, caller)
    assert refused.detail == "token quota exceeded: 1000 tokens per 60s on plan 'tokens'"
    assert refused.admission.refused_by is LimitKind.TOKENS
    assert refused.admission.retry_after == 50  # when the first request's 700 leave the window
    clock.advance(50)
    assert (await gatekeeper.admit(caller)).admission.state(LimitKind.TOKENS).remaining == 600  # type: ignore[union-attr]


async def test_daily_tokens_refuse_with_their_own_detail(
    gatekeeper: Gatekeeper, plans: PlanBook, clock: FakeClock
) -> None:
    caller = await on_plan(plans, "daily", daily_tokens=50)
    (await gatekeeper.admit(caller)).end(TokenCounts(20, 40))
    refused = await refusal(gatekeeper, caller)
    assert refused.detail == "daily token quota exceeded: 50 tokens per 24h on plan 'daily'"
    assert refused.admission.retry_after == 86_400


async def test_concurrency_is_a_lease_given_back_when_the_request_ends(
    gatekeeper: Gatekeeper, plans: PlanBook
) -> None:
    caller = await on_plan(plans, "pair", concurrency=2)
    first, second = await gatekeeper.admit(caller), await gatekeeper.admit(caller)
    refused = await refusal(gatekeeper, caller)
    assert refused.detail == "too many concurrent requests: at most 2 at once on plan 'pair'"
    assert refused.admission.retry_after == 1
    assert (await gatekeeper.remaining(caller))[1] == 2
    first.end(TokenCounts())
    first.end(TokenCounts())  # ending twice gives back one lease, not two
    third = await gatekeeper.admit(caller)
    await refusal(gatekeeper, caller)
    second.refund()
    third.end(TokenCounts())
    assert (await gatekeeper.remaining(caller))[1] == 0


async def test_a_refunded_request_consumes_nothing(gatekeeper: Gatekeeper) -> None:
    caller = Caller.anonymous("10.0.0.77")
    for _ in range(ANONYMOUS_RATE.limit):
        (await gatekeeper.admit(caller)).refund()
    assert await admitted(gatekeeper, caller, 10) == ANONYMOUS_RATE.limit


async def test_a_model_outside_the_plan_is_refused_before_it_consumes_anything(
    gatekeeper: Gatekeeper, plans: PlanBook
) -> None:
    caller = await on_plan(plans, "small", models=["smollm:*", "qwen2.5:0.5b"], requests="1/60")
    with pytest.raises(ModelNotAllowed) as raised:
        gatekeeper.check_model(caller, "llama3.2:70b")
    assert raised.value.status == 403
    assert raised.value.detail == "model 'llama3.2:70b' is not available on plan 'small'"
    assert gatekeeper.check_model(caller, "SmolLM").name == "small"  # smollm:latest, as Ollama reads it
    assert gatekeeper.check_model(caller, "qwen2.5:0.5b").name == "small"
    assert await admitted(gatekeeper, caller, 2) == 1  # the refusal took nothing from the quota


async def test_a_plan_edit_applies_to_the_next_request(gatekeeper: Gatekeeper, plans: PlanBook) -> None:
    caller = Caller.anonymous("10.0.0.88")
    await plans.patch("anonymous", {"requests": "1/60"})
    assert await admitted(gatekeeper, caller, 3) == 1
    await plans.patch("anonymous", {"requests": None})
    assert await admitted(gatekeeper, caller, 5) == 5


# -- the admin, listings, addresses, counters -----------------------------------------------------------

ADMIN_TOKEN = "correct-horse-battery-staple"


@pytest.fixture
def guarded(authenticator: Authenticator, limiter: InMemoryQuotaLimiter, plans: PlanBook) -> Gatekeeper:
    """A gatekeeper with an admin token and a listing quota of 2 per minute."""
    return Gatekeeper(authenticator, limiter, plans, admin_token=ADMIN_TOKEN, listing_window=Window(2, 60))


@pytest.mark.parametrize(
    ("authorization", "x_admin_token"), [(f"Bearer {ADMIN_TOKEN}", None), (None, ADMIN_TOKEN)]
)
async def test_the_admin_token_makes_the_admin_caller_who_has_no_limits(
    guarded: Gatekeeper, authorization: str | None, x_admin_token: str | None
) -> None:
    caller = await guarded.identify(None, authorization, "203.0.113.7", x_admin_token)
    assert caller == Caller("admin", Tier.ADMIN, None, "203.0.113.7", "admin", "admin")
    tickets = [await guarded.admit(caller) for _ in range(3 * ANONYMOUS_RATE.limit)]
    assert all(ticket.admission.admitted and ticket.admission.states == () for ticket in tickets)
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
    with pytest.raises(QuotaExceeded):
        await guarded.admit_listing(caller)
    # Listing did not use the chat quota, nor the other way round.
    assert await admitted(guarded, caller, 10) == ANONYMOUS_RATE.limit


async def test_an_ipv6_caller_is_counted_per_slash_64(gatekeeper: Gatekeeper) -> None:
    """One user controls a whole /64: rotating addresses inside it buys nothing."""
    rotating = [await gatekeeper.identify(None, None, f"2001:db8:1:2::{n:x}") for n in range(1, 10)]
    results = [await admitted(gatekeeper, caller, 1) for caller in rotating]
    assert sum(results) == ANONYMOUS_RATE.limit
    other_network = await gatekeeper.identify(None, None, "2001:db8:1:3::1")
    assert await admitted(gatekeeper, other_network, 1) == 1


class RecordingCounters:
    def __init__(self) -> None:
        self.added: list[str] = []

    def add(self, name: str) -> None:
        self.added.append(name)

    async def read(self, names: list[str]) -> dict[str, int] | None:
        return None


async def test_rejections_reach_the_shared_counters_without_an_await(
    authenticator: Authenticator, limiter: InMemoryQuotaLimiter, plans: PlanBook
) -> None:
    counters = RecordingCounters()
    gatekeeper = Gatekeeper(authenticator, limiter, plans, shared_counters=counters)
    caller = Caller.anonymous("203.0.113.7")
    await admitted(gatekeeper, caller, 4)
    with pytest.raises(InvalidCredentials):
        await gatekeeper.identify("garbage", None, "203.0.113.7")
    assert counters.added == ["rejected_rate_limited", "rejected_unauthorized"]
    # Unreachable shared counters: the status falls back to this instance's own.
    assert await gatekeeper.rejection_counts() == {"rejected_unauthorized": 1, "rejected_rate_limited": 1}
