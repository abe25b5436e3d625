"""Key management: create, list, revoke."""

from __future__ import annotations

from ollama_gate.domain.errors import NotFound
from ollama_gate.domain.keys import (
    ApiKey,
    IssuedKey,
    display_prefix,
    generate_secret,
    hash_secret,
    validate_key_id,
    validate_key_name,
    validate_member_id,
)
from ollama_gate.ports.clock import Clock
from ollama_gate.ports.cluster import KeyEvents
from ollama_gate.ports.stores import KeyStore
from ollama_gate.services.authenticator import Authenticator


class KeyService:
    """Creates and revokes keys; a revocation reaches this instance's cache before it returns, and the
    other instances' through `events`."""

    def __init__(
        self, store: KeyStore, authenticator: Authenticator, clock: Clock, events: KeyEvents | None = None
    ) -> None:
        self._store = store
        self._authenticator = authenticator
        self._clock = clock
        self._events = events

    async def create(self, user_id: str, name: str | None, plan: str | None = None) -> IssuedKey:
        """A new key of `user_id`; with `plan` (which must exist), its requests follow that plan and
        are counted per key."""
        user_id = validate_member_id(user_id)
        name = validate_key_name(name)
        secret = generate_secret()
        key_hash = hash_secret(secret)
        key = await self._store.add(user_id, name, key_hash, display_prefix(secret), self._clock.now(), plan)
        self._authenticator.key_created(key_hash)
        return IssuedKey(key, secret)

    async def list(self, user_id: str | None) -> list[ApiKey]:
        return await self._store.list(user_id)

    async def revoke(self, key_id: int, user_id: str | None) -> ApiKey:
        """Revoke (idempotently) a key, of `user_id` when given; NotFound otherwise."""
        key = await self._store.get(validate_key_id(key_id))
        if key is None or (user_id is not None and key.user_id != user_id):
            raise NotFound(f"key {key_id} not found")
        revoked = await self._store.revoke(key_id, self._clock.now())
        if revoked is None:
            raise NotFound(f"key {key_id} not found")
        self._authenticator.key_revoked(revoked)
        if self._events is not None:
            await self._events.publish_revoked(key_id)
        return revoked
