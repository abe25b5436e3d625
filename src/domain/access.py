"""Who may manage keys and read usage: admins, members for themselves, nobody else."""

from __future__ import annotations

import hmac

from ollama_gate.domain.client_address import parse_ip
from ollama_gate.domain.errors import Forbidden, InvalidRequest
from ollama_gate.domain.identity import Tier, tier_of_user
from ollama_gate.domain.immutable import immutable
from ollama_gate.domain.keys import bearer_token, is_key_shaped, validate_user_id

ADMIN_HELP = (
    "admin access required: set OLLAMA_GATE_ADMIN_TOKEN and send it as 'Authorization: Bearer <token>' "
    "or 'X-Admin-Token', or call from the gateway's own machine (loopback, not through a proxy) "
    "when no admin token is set"
)


@immutable
class Principal:
    """Who is asking for a management operation. `user_id` is set for a member acting with its own key."""

    is_admin: bool
    user_id: str | None = None

    @classmethod
    def admin(cls) -> Principal:
        return cls(is_admin=True)

    @classmethod
    def member(cls, user_id: str) -> Principal:
        return cls(is_admin=False, user_id=user_id)

    @classmethod
    def nobody(cls) -> Principal:
        return cls(is_admin=False)


class AdminToken:
    """The configured admin token, compared in constant time."""

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self._token)


def presented_admin_token(
    authorization: str | None, x_admin_token: str | None, admin_token_configured: bool
) -> str | None:
    """The admin token a request presents, or None when it presents none.

    `X-Admin-Token` always counts as an attempt. With a token configured, so does a Bearer token that
    is not key-shaped (that is how an admin's Ollama or OpenAI client sends it).
    """
    if x_admin_token is not None:
        return x_admin_token.strip()
    if not admin_token_configured or authorization is None:
        return None
    token = bearer_token(authorization)
    if token and not is_key_shaped(token):
        return token
    return None


def is_loopback(address: str) -> bool:
    ip = parse_ip(address)
    return ip is not None and ip.is_loopback


def is_local_admin(peer: str, relayed: bool) -> bool:
    """Without an admin token, only a direct loopback peer is an admin: a relayed request is not local."""
    return is_loopback(peer) and not relayed


def require_someone(principal: Principal) -> None:
    """Forbidden for a caller that is neither an admin nor a member."""
    if not principal.is_admin and principal.user_id is None:
        raise Forbidden(ADMIN_HELP)


def scope_user(principal: Principal, user_id: str | None, *, required_for_admin: bool) -> str | None:
    """The user an operation may act on, after the access rules; raises Forbidden or InvalidRequest.

    Admins act on anyone (`None` means everyone where `required_for_admin` is false). Members act on
    themselves only; their own user id is the default.
    """
    if principal.is_admin:
        if user_id is None:
            if required_for_admin:
                raise InvalidRequest("user_id is required")
            return None
        return validate_user_id(user_id)
    if principal.user_id is None:
        raise Forbidden(ADMIN_HELP)
    if user_id is not None and user_id != principal.user_id:
        raise Forbidden("a member may only act on its own user_id")
    return principal.user_id


@immutable
class UsageScope:
    """Whose usage rows a query may return: one user of one tier, or (None) everyone."""

    user: str
    tier: Tier


def usage_scope(principal: Principal, user_id: str | None) -> UsageScope | None:
    """The rows `principal` may read, narrowed to `user_id` when given (see `scope_user`).

    Scoped by tier as well as user: the anonymous callers' rows (user `anonymous`) and the admin's are
    their own tiers, so no member, whatever it is called, reads them.
    """
    user = scope_user(principal, user_id, required_for_admin=False)
    if user is None:
        return None
    return UsageScope(user, tier_of_user(user) if principal.is_admin else Tier.MEMBER)
