"""The console's sign-in and sessions, and the chart series: the same access rules as the API.

Signing in checks a credential once (the admin token, a member's key, or, with no admin token set, a
direct loopback peer) and hands out a signed session that names who signed in, never the credential.
Each request then turns the session back into a `Principal`; a member's key is looked up again, so a
revoked key ends the session at its next request.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from ollama_gate.domain.access import AdminToken, Principal, is_local_admin, usage_scope
from ollama_gate.domain.client_address import quota_address
from ollama_gate.domain.console_session import (
    DEFAULT_SESSION_SECONDS,
    ConsoleSession,
    csrf_matches,
    csrf_token,
    read_session,
    sign_session,
)
from ollama_gate.domain.errors import Forbidden, InvalidRequest, Unauthorized
from ollama_gate.domain.keys import is_key_shaped
from ollama_gate.domain.sign_in_attempts import FailedSignIns
from ollama_gate.domain.usage_series import (
    BucketCount,
    Series,
    SeriesRange,
    SeriesWindow,
    UserTotals,
    regroup,
    shape_series,
)
from ollama_gate.ports.clock import Clock
from ollama_gate.ports.stores import KeyStore, UsageSeriesStore
from ollama_gate.services.authenticator import Authenticator

BAD_SIGN_IN = "that admin token or API key is not valid"


class ConsoleSessions:
    def __init__(
        self,
        authenticator: Authenticator,
        keys: KeyStore,
        clock: Clock,
        secret: bytes,
        admin_token: str | None,
        lifetime: float = DEFAULT_SESSION_SECONDS,
    ) -> None:
        self._authenticator = authenticator
        self._keys = keys
        self._clock = clock
        self._secret = secret
        self._admin_token = AdminToken(admin_token) if admin_token else None
        self.lifetime = lifetime
        self._failures = FailedSignIns()

    @property
    def loopback_sign_in(self) -> bool:
        """Whether a direct loopback visitor may sign in as the admin without a token."""
        return self._admin_token is None

    async def sign_in(
        self, credential: str, peer: str, relayed: bool, client: str | None = None
    ) -> ConsoleSession:
        """A session for whoever `credential` names: the admin token, or an active key (its owner).
        An empty credential signs in the loopback admin when no admin token is set. Unauthorized
        otherwise, with the same sentence whatever was wrong; after too many of those from one client
        address (`client` as the trusted-proxy rule decided it, else the peer; IPv6 counted per /64),
        TooManySignIns without checking."""
        address, now = quota_address(client or peer), self._clock.time()
        self._failures.check(address, now)
        try:
            session = await self._session_for(credential.strip(), peer, relayed, now)
        except Unauthorized:
            self._failures.failed(address, now)
            raise
        self._failures.succeeded(address)
        return session

    async def _session_for(self, credential: str, peer: str, relayed: bool, now: float) -> ConsoleSession:
        if not credential:
            if self._admin_token is None and is_local_admin(peer, relayed):
                return ConsoleSession.for_admin(now, self.lifetime)
            raise InvalidRequest("enter the admin token or an API key")
        if is_key_shaped(credential):
            try:
                key = await self._authenticator.member_key(credential)
            except Unauthorized:
                raise Unauthorized(BAD_SIGN_IN) from None
            return ConsoleSession.for_member(key.user_id, key.id, now, self.lifetime)
        if self._admin_token is not None and self._admin_token.matches(credential):
            return ConsoleSession.for_admin(now, self.lifetime)
        raise Unauthorized(BAD_SIGN_IN)

    def cookie_value(self, session: ConsoleSession) -> str:
        return sign_session(session, self._secret)

    async def resume(
        self, cookie: str | None, peer: str, relayed: bool
    ) -> tuple[ConsoleSession, Principal] | None:
        """The session and principal of a cookie, or None: no cookie, a bad or expired one, or a member
        whose key is revoked (or gone)."""
        session = read_session(cookie, self._secret, self._clock.time())
        if session is None:
            return None
        if session.is_admin:
            return session, Principal.admin()
        assert session.key_id is not None and session.user_id is not None  # read_session checks
        key = await self._keys.get(session.key_id)
        if key is None or key.revoked_at is not None or key.user_id != session.user_id:
            return None
        return session, Principal.member(session.user_id)

    def form_token(self, session: ConsoleSession) -> str:
        return csrf_token(session, self._secret)

    def form_token_matches(self, session: ConsoleSession, presented: str | None) -> bool:
        return csrf_matches(session, self._secret, presented)


class UsageCharts:
    """Requests and tokens per minute over the last hour and day, and the top users, of the rows the
    principal may read: each a range of the timestamp index, never the whole table."""

    def __init__(self, store: UsageSeriesStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def series(self, principal: Principal, span: SeriesRange, user_id: str | None = None) -> Series:
        window = SeriesWindow.ending_at(self._clock.time(), span)
        return shape_series(await self._counts(principal, user_id, window, window.bucket_seconds), window)

    async def hour_and_day(self, principal: Principal) -> tuple[Series, Series]:
        """Both charts from one pass over the last day, counted per minute."""
        now = self._clock.time()
        hour, day = (
            SeriesWindow.ending_at(now, SeriesRange.HOUR),
            SeriesWindow.ending_at(now, SeriesRange.DAY),
        )
        minutes = await self._counts(principal, None, day, MINUTE)
        return (
            shape_series(regroup(minutes, MINUTE, hour.bucket_seconds), hour),
            shape_series(regroup(minutes, MINUTE, day.bucket_seconds), day),
        )

    async def top_users(self, principal: Principal, limit: int) -> list[UserTotals]:
        """The busiest users of the current hour and the 23 before it (admins only: it names everyone).
        Whole hours, so the store answers from its hourly counts, not from the rows."""
        if not principal.is_admin:
            raise Forbidden("only an admin sees every user's usage")
        until = (math.floor(self._clock.time() / HOUR) + 1) * HOUR
        return await self._store.top_users(_utc(until - DAY), _utc(until), limit)

    async def _counts(
        self, principal: Principal, user_id: str | None, window: SeriesWindow, bucket_seconds: int
    ) -> list[BucketCount]:
        scope = usage_scope(principal, user_id)
        return await self._store.buckets(scope, _utc(window.since), _utc(window.until), bucket_seconds)


MINUTE = 60
HOUR = 3600
DAY = 86_400.0


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
