"""Who may pass: authenticate the caller, then apply the caller's quota."""

from __future__ import annotations

from dataclasses import dataclass

from ollama_gate.domain.access import AdminToken, presented_admin_token
from ollama_gate.domain.client_address import DEFAULT_IPV6_PREFIX, quota_address
from ollama_gate.domain.errors import RateLimited, Unauthorized
from ollama_gate.domain.identity import Caller, Tier
from ollama_gate.domain.keys import InvalidCredentials, parse_key_headers
from ollama_gate.domain.ratelimit import Decision, RateLimit
from ollama_gate.ports.cluster import SharedCounters
from ollama_gate.ports.ratelimit import RateLimiter
from ollama_gate.services.authenticator import Authenticator

REJECTED_UNAUTHORIZED = "rejected_unauthorized"
REJECTED_RATE_LIMITED = "rejected_rate_limited"


@dataclass(slots=True)
class RejectionCounters:
    """Requests turned away since start; they are not usage rows."""

    unauthorized: int = 0
    rate_limited: int = 0


class Gatekeeper:
    """Authentication first (a bad credential is 401 whatever the quota), then the tier's sliding window.

    The admin token is a credential on every path: its bearer is the `admin` caller, never rate-limited.
    Rejections are counted in memory and handed to the shared counters without waiting for them.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        limiter: RateLimiter,
        anonymous_rate: RateLimit,
        member_rate: RateLimit,
        shared_counters: SharedCounters | None = None,
        admin_token: str | None = None,
        listing_rate: RateLimit | None = None,
        ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
    ) -> None:
        self._authenticator = authenticator
        self._limiter = limiter
        self.anonymous_rate = anonymous_rate
        self.member_rate = member_rate
        self.listing_rate = listing_rate
        self.rejections = RejectionCounters()
        self._shared = shared_counters
        self._admin_token = AdminToken(admin_token) if admin_token else None
        self._ipv6_prefix = ipv6_prefix

    async def identify(
        self,
        x_api_key: str | None,
        authorization: str | None,
        client_ip: str,
        x_admin_token: str | None = None,
    ) -> Caller:
        """The caller a request's headers make; raises Unauthorized (counted) for a wrong credential."""
        try:
            admin = presented_admin_token(authorization, x_admin_token, self._admin_token is not None)
            if admin is not None:
                if self._admin_token is None or not self._admin_token.matches(admin):
                    raise InvalidCredentials("invalid admin token")
                return Caller.admin(client_ip)
            secret = parse_key_headers(x_api_key, authorization)
            if secret is None:
                return Caller.anonymous(client_ip)
            key = await self._authenticator.member_key(secret)
        except Unauthorized:
            self._count_rejection(REJECTED_UNAUTHORIZED)
            raise
        return Caller.member(key.user_id, key.id, client_ip)

    def rate_for(self, caller: Caller) -> RateLimit | None:
        """The caller's quota; None for the admin, who is not rate-limited."""
        if caller.tier is Tier.ADMIN:
            return None
        return self.member_rate if caller.tier is Tier.MEMBER else self.anonymous_rate

    def quota_identity(self, caller: Caller) -> str:
        """Whom a quota counts: members per user (all keys share it), anonymous callers per address
        (an IPv6 address per network prefix)."""
        if caller.tier is Tier.ANONYMOUS:
            return f"ip:{quota_address(caller.client_ip, self._ipv6_prefix)}"
        return f"user:{caller.user}"

    async def admit(self, caller: Caller) -> Decision | None:
        """Take one slot of the caller's quota; raises RateLimited (counted) when none is free.
        None when the caller has no quota (the admin)."""
        rate = self.rate_for(caller)
        return None if rate is None else await self._take(caller, rate)

    async def admit_listing(self, caller: Caller) -> Decision | None:
        """The listing paths' own generous quota (`/api/tags`, `/api/show`, ...), so they cannot be used to
        flood Ollama; None for the admin or when listings are not limited."""
        if self.listing_rate is None or caller.tier is Tier.ADMIN:
            return None
        return await self._take(caller, self.listing_rate)

    async def _take(self, caller: Caller, rate: RateLimit) -> Decision:
        decision = await self._limiter.acquire(self.quota_identity(caller), rate)
        if not decision.admitted:
            self._count_rejection(REJECTED_RATE_LIMITED)
            raise RateLimited(decision)
        return decision

    def _count_rejection(self, name: str) -> None:
        if name == REJECTED_UNAUTHORIZED:
            self.rejections.unauthorized += 1
        else:
            self.rejections.rate_limited += 1
        if self._shared is not None:
            self._shared.add(name)

    async def active_anonymous_identities(self) -> int:
        return await self._limiter.active_identities(self.anonymous_rate)

    async def rejection_counts(self) -> dict[str, int]:
        """Cluster-wide when counters are shared (and reachable), else this instance's since start."""
        if self._shared is not None:
            shared = await self._shared.read([REJECTED_UNAUTHORIZED, REJECTED_RATE_LIMITED])
            if shared is not None:
                return shared
        return self.local_rejection_counts()

    def local_rejection_counts(self) -> dict[str, int]:
        """This instance's own counts since start."""
        return {
            REJECTED_UNAUTHORIZED: self.rejections.unauthorized,
            REJECTED_RATE_LIMITED: self.rejections.rate_limited,
        }

    @property
    def limiter_health(self) -> dict[str, object]:
        return {"backend": self._limiter.backend, "healthy": self._limiter.healthy}
