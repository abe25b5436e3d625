"""Who may pass: authenticate the caller, then apply the caller's quota."""

from __future__ import annotations

from dataclasses import dataclass

from ollama_gate.domain.errors import RateLimited, Unauthorized
from ollama_gate.domain.identity import Caller, Tier
from ollama_gate.domain.keys import parse_key_headers
from ollama_gate.domain.ratelimit import Decision, RateLimit
from ollama_gate.ports.cluster import SharedCounters
from ollama_gate.ports.ratelimit import RateLimiter
from ollama_gate.services.authenticator import Authenticator


@dataclass(slots=True)
class RejectionCounters:
    """Requests turned away since start; they are not usage rows."""

    unauthorized: int = 0
    rate_limited: int = 0


class Gatekeeper:
    """Authentication first (a bad key is 401 whatever the quota), then the tier's sliding window."""

    def __init__(
        self,
        authenticator: Authenticator,
        limiter: RateLimiter,
        anonymous_rate: RateLimit,
        member_rate: RateLimit,
        shared_counters: SharedCounters | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._limiter = limiter
        self.anonymous_rate = anonymous_rate
        self.member_rate = member_rate
        self.rejections = RejectionCounters()
        self._shared = shared_counters

    async def identify(self, x_api_key: str | None, authorization: str | None, client_ip: str) -> Caller:
        """The caller a request's headers make; raises Unauthorized (counted) for a wrong credential."""
        try:
            secret = parse_key_headers(x_api_key, authorization)
            if secret is None:
                return Caller.anonymous(client_ip)
            key = await self._authenticator.member_key(secret)
        except Unauthorized:
            self.rejections.unauthorized += 1
            if self._shared is not None:
                await self._shared.increment("rejected_unauthorized")
            raise
        return Caller.member(key.user_id, key.id, client_ip)

    def rate_for(self, caller: Caller) -> RateLimit:
        return self.member_rate if caller.tier is Tier.MEMBER else self.anonymous_rate

    async def admit(self, caller: Caller) -> Decision:
        """Take one slot of the caller's quota; raises RateLimited (counted) when none is free."""
        decision = await self._limiter.acquire(caller.quota_identity, self.rate_for(caller))
        if not decision.admitted:
            self.rejections.rate_limited += 1
            if self._shared is not None:
                await self._shared.increment("rejected_rate_limited")
            raise RateLimited(decision)
        return decision

    async def active_anonymous_identities(self) -> int:
        return await self._limiter.active_identities(self.anonymous_rate)

    async def rejection_counts(self) -> dict[str, int]:
        """Cluster-wide when counters are shared (and reachable), else this instance's since start."""
        names = ["rejected_unauthorized", "rejected_rate_limited"]
        if self._shared is not None:
            shared = await self._shared.read(names)
            if shared is not None:
                return shared
        return dict(zip(names, (self.rejections.unauthorized, self.rejections.rate_limited), strict=True))

    @property
    def limiter_health(self) -> dict[str, object]:
        return {"backend": self._limiter.backend, "healthy": self._limiter.healthy}
