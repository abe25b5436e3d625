"""Who is asking for a management operation: admin, a member with its own key, or nobody."""

from __future__ import annotations

from ollama_gate.domain.access import AdminToken, Principal, is_local_admin, presented_admin_token
from ollama_gate.domain.errors import Forbidden
from ollama_gate.domain.keys import parse_key_headers
from ollama_gate.services.authenticator import Authenticator


class AccessPolicy:
    """An explicit credential decides: the admin token, or a member key. Without one, the loopback rule
    applies, and only when no admin token is configured."""

    def __init__(self, authenticator: Authenticator, admin_token: str | None) -> None:
        self._authenticator = authenticator
        self._admin_token = AdminToken(admin_token) if admin_token else None

    async def principal(
        self,
        *,
        x_api_key: str | None,
        authorization: str | None,
        x_admin_token: str | None,
        peer: str,
        relayed: bool,
    ) -> Principal:
        presented_admin = presented_admin_token(authorization, x_admin_token, self._admin_token is not None)
        if presented_admin is not None:
            if self._admin_token is not None and self._admin_token.matches(presented_admin):
                return Principal.admin()
            raise Forbidden("invalid admin token")
        secret = parse_key_headers(x_api_key, authorization)
        if secret is not None:
            key = await self._authenticator.member_key(secret)
            return Principal.member(key.user_id)
        if self._admin_token is None and is_local_admin(peer, relayed):
            return Principal.admin()
        return Principal.nobody()
