"""Who is asking for a management operation: admin, a member with its own key, or nobody."""

from __future__ import annotations

import hmac

from ollama_gate.domain.access import Principal, is_local_admin
from ollama_gate.domain.errors import Forbidden
from ollama_gate.domain.keys import bearer_token, is_key_shaped, parse_key_headers
from ollama_gate.services.authenticator import Authenticator


class AccessPolicy:
    """An explicit credential decides: the admin token, or a member key. Without one, the loopback rule
    applies, and only when no admin token is configured."""

    def __init__(self, authenticator: Authenticator, admin_token: str | None) -> None:
        self._authenticator = authenticator
        self._admin_token = admin_token.encode() if admin_token else None

    async def principal(
        self,
        *,
        x_api_key: str | None,
        authorization: str | None,
        x_admin_token: str | None,
        peer: str,
        relayed: bool,
    ) -> Principal:
        presented_admin = self._presented_admin_token(authorization, x_admin_token)
        if presented_admin is not None:
            if self._admin_token is not None and hmac.compare_digest(
                presented_admin.encode(), self._admin_token
            ):
                return Principal.admin()
            raise Forbidden("invalid admin token")
        secret = parse_key_headers(x_api_key, authorization)
        if secret is not None:
            key = await self._authenticator.member_key(secret)
            return Principal.member(key.user_id)
        if self._admin_token is None and is_local_admin(peer, relayed):
            return Principal.admin()
        return Principal.nobody()

    def _presented_admin_token(self, authorization: str | None, x_admin_token: str | None) -> str | None:
        if x_admin_token is not None:
            return x_admin_token.strip()
        if self._admin_token is None or authorization is None:
            return None
        # A Bearer token that is not key-shaped is an attempt at the admin token.
        token = bearer_token(authorization)
        if token and not is_key_shaped(token):
            return token
        return None
