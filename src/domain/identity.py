"""Who is calling: the tiers and the caller a request resolves to."""

from __future__ import annotations

from enum import StrEnum

from ollama_gate.domain.immutable import immutable

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


@immutable
class Caller:
    """The resolved identity of one request: who, from where, on which plan, counted as whom.

    `counted_as` is the identity the plan's limits count: an anonymous caller's address (an IPv6 one by
    its network), a member's user (all its keys share the limits), or one key when that key has a plan
    of its own.
    """

    user: str
    tier: Tier
    key_id: int | None
    client_ip: str
    plan: str = ""
    counted_as: str = ""

    @classmethod
    def anonymous(cls, client_ip: str, counted_as: str | None = None) -> Caller:
        return cls(
            ANONYMOUS_USER, Tier.ANONYMOUS, None, client_ip, ANONYMOUS_USER, counted_as or f"ip:{client_ip}"
        )

    @classmethod
    def member(
        cls, user_id: str, key_id: int, client_ip: str, plan: str = "member", per_key: bool = False
    ) -> Caller:
        counted_as = f"key:{key_id}" if per_key else f"user:{user_id}"
        return cls(user_id, Tier.MEMBER, key_id, client_ip, plan, counted_as)

    @classmethod
    def admin(cls, client_ip: str) -> Caller:
        """Whoever presents the admin token: recorded as user `admin`, on the admin plan."""
        return cls(ADMIN_USER, Tier.ADMIN, None, client_ip, ADMIN_USER, ADMIN_USER)
