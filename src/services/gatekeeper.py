"""Who may pass: authenticate the caller, find its plan, then apply the plan's limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ollama_gate.domain.access import AdminToken, presented_admin_token
from ollama_gate.domain.client_address import DEFAULT_IPV6_PREFIX, quota_address
from ollama_gate.domain.errors import ModelNotAllowed, Unauthorized
from ollama_gate.domain.identity import Caller, Tier
from ollama_gate.domain.keys import ApiKey, InvalidCredentials, parse_key_headers
from ollama_gate.domain.plans import ANONYMOUS_PLAN, Plan, Window
from ollama_gate.domain.quota import Admission, LimitKind, Limits, LimitState, QuotaExceeded
from ollama_gate.domain.usage import TokenCounts
from ollama_gate.ports.cluster import SharedCounters
from ollama_gate.ports.quota import QuotaLimiter
from ollama_gate.ports.telemetry import Telemetry
from ollama_gate.services.authenticator import Authenticator
from ollama_gate.services.plans import PlanBook

REJECTED_UNAUTHORIZED = "rejected_unauthorized"
REJECTED_RATE_LIMITED = "rejected_rate_limited"
LISTING = "listing"
# The metrics' reason for a limit that refused (daily tokens are tokens too).
_REASONS = {
    None: "requests",
    LimitKind.REQUESTS: "requests",
    LimitKind.TOKENS: "tokens",
    LimitKind.DAILY_TOKENS: "tokens",
    LimitKind.CONCURRENCY: "concurrency",
}
# Member callers kept for reuse (see Gatekeeper._member); past this many, the kept ones are forgotten.
_MEMBERS_KEPT = 4096


@dataclass(slots=True)
class RejectionCounters:
    """Requests turned away since start; they are not usage rows."""

    unauthorized: int = 0
    rate_limited: int = 0


class Ticket:
    """An admitted request's hold on its plan: ended exactly once, when the request ends however it ends
    (its tokens charged, its lease given back, and whatever else waited for its end), or refunded when it
    never reached the GPU."""

    __slots__ = ("_gatekeeper", "_on_end", "admission", "caller", "ended", "plan", "queue_ms", "request_id")

    def __init__(
        self,
        gatekeeper: Gatekeeper,
        caller: Caller,
        plan: Plan,
        admission: Admission,
        request_id: str | None = None,
    ) -> None:
        self._gatekeeper = gatekeeper
        self.caller = caller
        self.plan = plan
        self.admission = admission
        self.request_id = request_id  # the id the request is answered with, for its usage row
        self.ended = False
        self.queue_ms: float | None = None  # how long it waited for a GPU slot (None: it did not queue)
        # Made by the first `on_end`: a request waiting for its slot has none yet (and thousands wait).
        self._on_end: list[Callable[[], None]] | None = None

    def on_end(self, callback: Callable[[], None]) -> None:
        """Run `callback` when the ticket ends (at once if it already has)."""
        if self.ended:
            callback()
        elif self._on_end is None:
            self._on_end = [callback]
        else:
            self._on_end.append(callback)

    def end(self, tokens: TokenCounts) -> None:
        if self._close():
            self._gatekeeper._finished(self, tokens.charged)

    def refund(self) -> None:
        if self._close():
            self._gatekeeper._refunded(self)

    def _close(self) -> bool:
        if self.ended:
            return False
        self.ended = True
        if self._on_end is not None:
            for callback in self._on_end:
                callback()
        return True


class Gatekeeper:
    """Authentication first (a bad credential is 401 whatever the limits), then the caller's plan.

    The admin token is a credential on every path: its bearer is the `admin` caller, on the admin plan.
    Rejections are counted in memory and handed to the shared counters without waiting for them. A plan
    with nothing to count costs no limiter call at all.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        limiter: QuotaLimiter,
        plans: PlanBook,
        shared_counters: SharedCounters | None = None,
        admin_token: str | None = None,
        listing_window: Window | None = None,
        ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._limiter = limiter
        self.plans = plans
        self.rejections = RejectionCounters()
        self._shared = shared_counters
        self._admin_token = AdminToken(admin_token) if admin_token else None
        self._listing = Limits(LISTING, requests=listing_window) if listing_window is not None else None
        self._ipv6_prefix = ipv6_prefix
        self._telemetry = telemetry
        self._in_flight: dict[str, int] = {}
        # Per plan name: the plan last seen under it and its limits (one object for every request of the
        # plan, not one each; an edited plan is a new object, and replaces its entry).
        self._limits: dict[str, tuple[Plan, Limits]] = {}
        self._members: dict[tuple[int, str, str, bool], Caller] = {}

    # -- who -----------------------------------------------------------------------------------------

    async def identify(
        self,
        x_api_key: str | None,
        authorization: str | None,
        client_ip: str,
        x_admin_token: str | None = None,
    ) -> Caller:
        """The caller a request's headers make; raises Unauthorized (counted) for a wrong credential."""
        try:
            admin = presented_admin_token(authorization, x_admin_token, self._admin_token is not None)
            if admin is not None:
                if self._admin_token is None or not self._admin_token.matches(admin):
                    raise InvalidCredentials("invalid admin token")
                return Caller.admin(client_ip)
            secret = parse_key_headers(x_api_key, authorization)
            if secret is None:
                return Caller.anonymous(client_ip, f"ip:{quota_address(client_ip, self._ipv6_prefix)}")
            key = await self._authenticator.member_key(secret)
        except Unauthorized:
            self._count_rejection(REJECTED_UNAUTHORIZED, "unauthorized")
            raise
        if key.plan is not None and self.plans.exists(key.plan):
            return self._member(key, client_ip, key.plan, per_key=True)
        return self._member(key, client_ip, self.plans.plan_of_user(key.user_id), per_key=False)

    def _member(self, key: ApiKey, client_ip: str, plan: str, per_key: bool) -> Caller:
        """The member caller of a key from an address on a plan: one object for all their requests (every
        request holds its caller, a waiting one as long as it waits), made again when any of them changes.
        A key's user never changes."""
        made_of = (key.id, client_ip, plan, per_key)
        caller = self._members.get(made_of)
        if caller is None:
            if len(self._members) >= _MEMBERS_KEPT:
                self._members.clear()
            caller = self._members[made_of] = Caller.member(key.user_id, key.id, client_ip, plan, per_key)
        return caller

    def plan_of(self, caller: Caller) -> Plan:
        return self.plans.plan(caller.plan)

    def check_model(self, caller: Caller, model: str | None) -> Plan:
        """The caller's plan, when it allows `model` (ModelNotAllowed, 403, otherwise). Checked before
        admission: a refused model consumes nothing."""
        plan = self.plan_of(caller)
        if not plan.allows_model(model):
            if self._telemetry is not None:
                self._telemetry.rejected("model")
            raise ModelNotAllowed(model or "", plan.name)
        return plan

    # -- how much --------------------------------------------------------------------------------------

    async def admit(self, caller: Caller, plan: Plan | None = None, request_id: str | None = None) -> Ticket:
        """Take one admission under every limit of the caller's plan; raises QuotaExceeded (429, counted)
        when one is used up. `request_id` rides on the ticket to the request's usage row."""
        plan = plan or self.plan_of(caller)
        limits = self._limits_of(plan)
        if limits.empty:
            admission = Admission(True, limits, ())
        else:
            admission = await self._limiter.admit(caller.counted_as, limits)
            if not admission.admitted:
                self._count_rejection(REJECTED_RATE_LIMITED, _REASONS[admission.refused_by])
                raise QuotaExceeded(admission)
        identity = caller.counted_as
        self._in_flight[identity] = self._in_flight.get(identity, 0) + 1
        return Ticket(self, caller, plan, admission, request_id)

    def _limits_of(self, plan: Plan) -> Limits:
        known = self._limits.get(plan.name)
        if known is not None and known[0] is plan:
            return known[1]
        limits = Limits.of(plan)
        self._limits[plan.name] = (plan, limits)
        return limits

    async def admit_listing(self, caller: Caller) -> Admission | None:
        """The listing paths' own generous quota (`/api/tags`, `/api/show`, ...), so they cannot be used to
        flood Ollama; None for the admin or when listings are not limited."""
        if self._listing is None or caller.tier is Tier.ADMIN:
            return None
        admission = await self._limiter.admit(f"{LISTING}:{caller.counted_as}", self._listing)
        if not admission.admitted:
            self._count_rejection(REJECTED_RATE_LIMITED, "requests")
            raise QuotaExceeded(admission)
        return admission

    def _finished(self, ticket: Ticket, tokens: int) -> None:
        self._leave(ticket.caller.counted_as)
        if ticket.admission.limits.needs_finish:
            self._limiter.finish(ticket.caller.counted_as, ticket.admission, tokens)

    def _refunded(self, ticket: Ticket) -> None:
        self._leave(ticket.caller.counted_as)
        if not ticket.admission.limits.empty:
            self._limiter.refund(ticket.caller.counted_as, ticket.admission)

    def _leave(self, identity: str) -> None:
        left = self._in_flight.get(identity, 1) - 1
        if left:
            self._in_flight[identity] = left
        else:
            self._in_flight.pop(identity, None)

    async def remaining(self, caller: Caller) -> tuple[tuple[LimitState, ...], int]:
        """What the caller has left under its plan, and its requests in flight (across instances when
        the plan limits concurrency, else on this instance)."""
        limits = self._limits_of(self.plan_of(caller))
        states = () if limits.empty else await self._limiter.states(caller.counted_as, limits)
        concurrency = next((s for s in states if s.kind is LimitKind.CONCURRENCY), None)
        in_flight = (
            concurrency.limit - concurrency.remaining
            if concurrency is not None
            else self._in_flight.get(caller.counted_as, 0)
        )
        return states, in_flight

    # -- what the status shows -----------------------------------------------------------------------

    def _count_rejection(self, name: str, reason: str) -> None:
        if self._telemetry is not None:
            self._telemetry.rejected(reason)
        if name == REJECTED_UNAUTHORIZED:
            self.rejections.unauthorized += 1
        else:
            self.rejections.rate_limited += 1
        if self._shared is not None:
            self._shared.add(name)

    async def active_anonymous_identities(self) -> int:
        return await self._limiter.active_identities(Limits.of(self.plans.plan(ANONYMOUS_PLAN)))

    async def rejection_counts(self) -> dict[str, int]:
        """Cluster-wide when counters are shared (and reachable), else this instance's since start."""
        if self._shared is not None:
            shared = await self._shared.read([REJECTED_UNAUTHORIZED, REJECTED_RATE_LIMITED])
            if shared is not None:
                return shared
        return self.local_rejection_counts()

    def local_rejection_counts(self) -> dict[str, int]:
        """This instance's own counts since start."""
        return {
            REJECTED_UNAUTHORIZED: self.rejections.unauthorized,
            REJECTED_RATE_LIMITED: self.rejections.rate_limited,
        }

    @property
    def limiter_health(self) -> dict[str, object]:
        return {"backend": self._limiter.backend, "healthy": self._limiter.healthy}
