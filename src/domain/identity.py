"""Who is calling: the tiers and the caller a request resolves to."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

ANONYMOUS_USER = "anonymous"
ADMIN_USER = "admin"
# The users the gateway records by itself: no member may be called like them, or its usage would mix
# with theirs.
RESERVED_USERS = frozenset({ANONYMOUS_USER, ADMIN_USER})


class Tier(StrEnum):
    ANONYMOUS = "anonymous"
    MEMBER = "member"
    ADMIN = "admin"


def tier_of_user(user_id: str) -> Tier:
    """The tier whose usage rows carry `user_id`: the reserved names are their own tiers."""
    if user_id == ANONYMOUS_USER:
        return Tier.ANONYMOUS
    if user_id == ADMIN_USER:
        return Tier.ADMIN
    return Tier.MEMBER


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

    @classmethod
    def admin(cls, client_ip: str) -> Caller:
        """Whoever presents the admin token: recorded as user `admin`, never rate-limited."""
        return cls(ADMIN_USER, Tier.ADMIN, None, client_ip)
