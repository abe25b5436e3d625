"""Who may manage keys and read usage: admins, members for themselves, nobody else."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ollama_gate.domain.errors import Forbidden, InvalidRequest
from ollama_gate.domain.keys import validate_user_id

ADMIN_HELP = (
    "admin access required: set OLLAMA_GATE_ADMIN_TOKEN and send it as 'Authorization: Bearer <token>' "
    "or 'X-Admin-Token', or call from the gateway's own machine (loopback, not through a proxy) "
    "when no admin token is set"
)


@dataclass(frozen=True, slots=True)
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


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def is_local_admin(peer: str, relayed: bool) -> bool:
    """Without an admin token, only a direct loopback peer is an admin: a relayed request is not local."""
    return is_loopback(peer) and not relayed


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
