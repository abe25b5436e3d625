"""Who is calling: the two tiers and the caller a request resolves to."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

ANONYMOUS_USER = "anonymous"


class Tier(StrEnum):
    ANONYMOUS = "anonymous"
    MEMBER = "member"


@dataclass(frozen=True, slots=True)
class Caller:
    """The resolved identity of one request."""

    user: str
    tier: Tier
    key_id: int | None
    client_ip: str

    @classmethod
    def anonymous(cls, client_ip: str) -> Caller:
        return cls(ANONYMOUS_USER, Tier.ANONYMOUS, None, client_ip)

    @classmethod
    def member(cls, user_id: str, key_id: int, client_ip: str) -> Caller:
        return cls(user_id, Tier.MEMBER, key_id, client_ip)

    @property
    def quota_identity(self) -> str:
        """The rate-limit identity: anonymous callers per address, members per user (all keys share it)."""
        if self.tier is Tier.MEMBER:
            return f"user:{self.user}"
        return f"ip:{self.client_ip}"
