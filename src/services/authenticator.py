"""Resolve API keys to members without a database round trip per request."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from ollama_gate.domain.errors import StoreUnavailable
from ollama_gate.domain.keys import ApiKey, InvalidCredentials, hash_secret
from ollama_gate.ports.clock import Clock
from ollama_gate.ports.stores import KeyStore

log = logging.getLogger(__name__)


class Authenticator:
    """A cache in front of the KeyStore.

    - A known key is served from memory and re-read from the store in the background once it is older
      than `revalidate_after` seconds: a cached key never waits for the database (a stalled one
      included), and a revocation made elsewhere (the CLI, another instance) takes effect within
      `revalidate_after` seconds plus one store round trip. A revocation made through this process's
      KeyService takes effect at once.
    - If the store is down when a key is due for re-reading, the cached entry keeps serving.
    - An unknown key waits for the store at most `lookup_timeout` seconds, then StoreUnavailable (503).
    - Unknown hashes are remembered for `unknown_ttl` seconds, so a flood of made-up keys is not a flood
      of queries.
    - Concurrent requests for an unknown key share one store lookup, so a burst of requests with a new
      key is one query, not one per request. Keys that fall due for re-reading are re-read together,
      one query for all that fell due in the same turn of the loop (keys first used together fall due
      together: a hundred keys of a burst are one query every `revalidate_after`, not a hundred).
    - `last_used_at` is collected in memory and written in batches by `flush_last_used`.
    """

    def __init__(
        self,
        store: KeyStore,
        clock: Clock,
        revalidate_after: float = 5.0,
        unknown_ttl: float = 5.0,
        max_cached: int = 100_000,
        lookup_timeout: float = 2.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._revalidate_after = revalidate_after
        self._unknown_ttl = unknown_ttl
        self._max_cached = max_cached
        self._lookup_timeout = lookup_timeout
        self._known: dict[str, tuple[ApiKey, float]] = {}
        self._hash_by_id: dict[int, str] = {}
        self._unknown: dict[str, float] = {}
        # Wall time as a float per use (a datetime is made only when the batch is written).
        self._last_used: dict[int, float] = {}
        self._loading: dict[str, asyncio.Task[ApiKey]] = {}
        self._due: set[str] = set()  # hashes of cached keys to re-read together
        self._rereading: asyncio.Task[None] | None = None

    async def member_key(self, secret: str) -> ApiKey:
        """The active key for `secret`; raises InvalidCredentials, or StoreUnavailable on a cache miss
        while the store is down."""
        key_hash = hash_secret(secret)
        now = self._clock.monotonic()
        cached = self._known.get(key_hash)
        if cached is not None:
            key = cached[0]
            if cached[1] <= now:
                self._reread_later(key_hash, key, now)  # stale: served now, refreshed behind the answer
        else:
            try:
                key = await asyncio.wait_for(
                    asyncio.shield(self._load_once(key_hash, now)), self._lookup_timeout
                )
            except TimeoutError:
                raise StoreUnavailable() from None
        if key.revoked_at is not None:
            raise InvalidCredentials("API key revoked")
        self._last_used[key.id] = self._clock.time()
        return key

    def _load_once(self, key_hash: str, now: float) -> asyncio.Task[ApiKey]:
        """The store's answer for `key_hash`, shared by every caller that asks while it is on its way.
        Callers await it shielded: one that goes away must not cancel the lookup the others wait for."""
        loading = self._loading.get(key_hash)
        if loading is None:
            loading = asyncio.ensure_future(self._load(key_hash, now))
            self._loading[key_hash] = loading
            loading.add_done_callback(lambda task: self._load_done(key_hash, task))
        return loading

    def _reread_later(self, key_hash: str, key: ApiKey, now: float) -> None:
        # Not due again meanwhile: the uses that follow do not ask for it while the re-read is on its way.
        self._known[key_hash] = (key, now + self._revalidate_after)
        self._due.add(key_hash)
        if self._rereading is None:
            self._rereading = asyncio.ensure_future(self._reread_due())

    async def _reread_due(self) -> None:
        try:
            await asyncio.sleep(0)  # the keys that fall due in the same turn go in the same query
            while self._due:
                due, self._due = self._due, set()
                try:
                    found = await self._store.find_by_hashes(list(due))
                except StoreUnavailable:
                    continue  # served as they were, and asked for again at their next revalidation
                except Exception:
                    log.exception(
                        "re-reading %d cached keys failed; retried at their next revalidation", len(due)
                    )
                    continue
                now = self._clock.monotonic()
                for key_hash in due:
                    key = found.get(key_hash)
                    if key is not None:
                        self._remember(key_hash, key, now)
                    elif key_hash in self._known:
                        self._mark_unknown(key_hash, now)  # deleted from the store
        finally:
            self._rereading = None

    def _load_done(self, key_hash: str, task: asyncio.Task[ApiKey]) -> None:
        if self._loading.get(key_hash) is task:
            del self._loading[key_hash]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter went away

    async def _load(self, key_hash: str, now: float) -> ApiKey:
        expires = self._unknown.get(key_hash)
        if expires is not None and expires > now:
            raise InvalidCredentials("unknown API key")
        key = await self._store.find_by_hash(key_hash)
        if key is None:
            self._mark_unknown(key_hash, now)
            raise InvalidCredentials("unknown API key")
        self._remember(key_hash, key, now)
        return key

    def _mark_unknown(self, key_hash: str, now: float) -> None:
        self._forget_hash(key_hash)
        if len(self._unknown) >= self._max_cached:
            self._unknown.clear()
        self._unknown[key_hash] = now + self._unknown_ttl

    def _remember(self, key_hash: str, key: ApiKey, now: float) -> None:
        if key_hash not in self._known and len(self._known) >= self._max_cached:
            # Drop the oldest entry; it is reloaded from the store on its next use.
            self._forget_hash(next(iter(self._known)))
        cached = self._known.get(key_hash)
        if cached is not None and cached[0].revoked_at is not None and key.revoked_at is None:
            # Revocation is final: a read that began before it and ended after it must not undo it.
            key = cached[0]
        self._known[key_hash] = (key, now + self._revalidate_after)
        self._hash_by_id[key.id] = key_hash

    def _forget_hash(self, key_hash: str) -> None:
        entry = self._known.pop(key_hash, None)
        if entry is not None:
            self._hash_by_id.pop(entry[0].id, None)

    def key_created(self, key_hash: str) -> None:
        self._unknown.pop(key_hash, None)

    def key_revoked(self, key: ApiKey) -> None:
        """A revocation made here: the cached entry turns revoked at once, no store round trip needed."""
        key_hash = self._hash_by_id.get(key.id)
        if key_hash is not None:
            self._known[key_hash] = (key, self._clock.monotonic() + self._revalidate_after)

    def forget(self, key_id: int) -> None:
        """A key changed elsewhere: its next use reloads it from the store."""
        key_hash = self._hash_by_id.get(key_id)
        if key_hash is not None:
            self._forget_hash(key_hash)

    async def flush_last_used(self) -> None:
        if not self._last_used:
            return
        batch, self._last_used = self._last_used, {}
        try:
            await self._store.touch({key_id: datetime.fromtimestamp(at, UTC) for key_id, at in batch.items()})
        except StoreUnavailable:
            # Keep them for the next attempt; a newer use recorded meanwhile wins.
            for key_id, at in batch.items():
                self._last_used.setdefault(key_id, at)
            log.warning("database unavailable: last_used_at of %d keys kept for the next flush", len(batch))
