"""Several Ollama servers behind one front: model-aware, least-busy routing with failover.

Each server's model list is refreshed in the background; a server that refuses connections is marked
down, skipped while others can serve, and probed again until it answers. A request that cannot even
connect (nothing was sent, so nothing can have run twice) is retried on the next server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import msgspec

from ollama_gate.domain.errors import GatewayError, UpstreamUnavailable
from ollama_gate.domain.model_names import model_key
from ollama_gate.domain.status import ModelInfo
from ollama_gate.ports.llm import ProxyBackend, ProxyResponse, RequestBody, UpstreamResponse, UpstreamState
from ollama_gate.services.background import BackgroundTask

log = logging.getLogger(__name__)

R = TypeVar("R", bound=UpstreamResponse)


class _ModelField(msgspec.Struct):
    model: str | None = None


class _LoadedModel(msgspec.Struct):
    name: str | None = None
    model: str | None = None


class _Loaded(msgspec.Struct):
    models: list[_LoadedModel] = []


def model_of(body: bytes) -> str | None:
    """The `model` a JSON request names, or None (not JSON, not an object, no model)."""
    try:
        return msgspec.json.decode(body, type=_ModelField).model
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


class Upstream:
    """One server's routing state. `models` is None until its first listing arrives."""

    __slots__ = ("backend", "in_flight", "loaded", "models", "online")

    def __init__(self, backend: ProxyBackend) -> None:
        self.backend = backend
        self.online = True
        self.in_flight = 0
        self.models: frozenset[str] | None = None
        self.loaded: frozenset[str] = frozenset()  # what /api/ps listed (and what it just served)

    @property
    def url(self) -> str:
        return self.backend.base_url

    def may_have(self, key: str | None) -> bool:
        return key is None or self.models is None or key in self.models

    def state(self) -> UpstreamState:
        return UpstreamState(
            self.url,
            self.backend.name,
            self.online,
            self.in_flight,
            tuple(sorted(self.models or ())),
            tuple(sorted(self.loaded)),
            self.models is not None,
        )


class _Counted:
    """A response that gives its server's in-flight slot back once, when it is read or closed."""

    __slots__ = ("_inner", "_upstream")

    def __init__(self, inner: UpstreamResponse, upstream: Upstream) -> None:
        self._inner = inner
        self._upstream: Upstream | None = upstream

    def _release(self) -> None:
        if self._upstream is not None:
            self._upstream.in_flight -= 1
            self._upstream = None

    @property
    def status(self) -> int:
        return self._inner.status

    async def read(self) -> bytes:
        try:
            return await self._inner.read()
        finally:
            self._release()

    def lines(self) -> AsyncIterator[bytes]:
        # The inner iterator itself: no extra generator layer on the hot path.
        return self._inner.lines()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._release()


class _CountedProxy(_Counted):
    __slots__ = ("_proxied",)

    def __init__(self, inner: ProxyResponse, upstream: Upstream) -> None:
        super().__init__(inner, upstream)
        self._proxied = inner

    @property
    def content_type(self) -> str:
        return self._proxied.content_type

    def chunks(self) -> AsyncIterator[bytes]:
        return self._proxied.chunks()


class UpstreamPool:
    """An LLMRouter over `backends` (at least one)."""

    def __init__(
        self,
        backends: Sequence[ProxyBackend],
        refresh_interval: float = 10.0,
        retry_interval: float = 1.0,
        probe_timeout: float = 2.0,
    ) -> None:
        if not backends:
            raise ValueError("at least one Ollama server is required")
        self.upstreams = [Upstream(backend) for backend in backends]
        self._refresh_interval = refresh_interval
        self._retry_interval = retry_interval
        self._probe_timeout = probe_timeout
        self._turn = 0
        self.health_version = 0
        self.inventory_version = 0
        self._watcher = BackgroundTask("upstream-watch", self._watch)
        self._first_listing = BackgroundTask("upstream-first-listing", self._list_once)
        self._known_models: tuple[int, frozenset[str]] = (-1, frozenset())

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        for upstream in self.upstreams:
            await upstream.backend.start()
        if self._routes_by_model:
            # Route the first requests by model too; bounded by the probe timeout.
            await self.refresh()
        else:
            # One server: nothing to choose, so its first model list (for the queue and the metrics'
            # labels) need not hold the start-up back.
            self._first_listing.start()
        self._watcher.start()

    async def close(self) -> None:
        await self._first_listing.stop()
        await self._watcher.stop()
        for upstream in self.upstreams:
            await upstream.backend.close()

    @property
    def _routes_by_model(self) -> bool:
        # With one server there is no choice to make: its model list is kept (every refresh interval)
        # for the queue and the metrics, not for routing, and /api/ps is not polled.
        return len(self.upstreams) > 1

    def known_models(self) -> frozenset[str]:
        """Every model some server lists (the bound of the metrics' model labels)."""
        if self._known_models[0] != self.inventory_version:
            listed = frozenset(m for u in self.upstreams for m in (u.models or ()))
            self._known_models = (self.inventory_version, listed)
        return self._known_models[1]

    async def _watch(self) -> None:
        """Probe down servers every `retry_interval`; refresh every model list every `refresh_interval`."""
        since_refresh = 0.0
        while True:
            await asyncio.sleep(self._retry_interval)
            since_refresh += self._retry_interval
            full = since_refresh >= self._refresh_interval
            if full:
                since_refresh = 0.0
            targets = self.upstreams if full else [u for u in self.upstreams if not u.online]
            if targets:
                try:
                    await self.refresh(targets)
                except Exception:
                    log.exception("refreshing the Ollama servers failed")

    async def _list_once(self) -> None:
        await self.refresh()

    async def refresh(self, targets: Sequence[Upstream] | None = None) -> list[list[ModelInfo] | None]:
        """List the models of `targets` (default: all) at once; a server that fails is marked down."""
        chosen = self.upstreams if targets is None else targets
        return list(await asyncio.gather(*(self._probe(u, self._probe_timeout) for u in chosen)))

    async def _probe(self, upstream: Upstream, timeout: float) -> list[ModelInfo] | None:
        try:
            models = await asyncio.wait_for(upstream.backend.models(timeout), timeout + 0.1)
        except (GatewayError, TimeoutError) as error:
            self._mark_down(upstream, error)
            return None
        listed = frozenset(model_key(m.name) for m in models)
        if listed != upstream.models:
            upstream.models = listed
            self.inventory_version += 1
        self._mark_up(upstream)
        if self._routes_by_model:
            await self._probe_loaded(upstream, timeout)
        return models

    async def _probe_loaded(self, upstream: Upstream, timeout: float) -> None:
        """What the server has in memory now (`GET /api/ps`), so requests go where no load is needed."""
        try:
            async with asyncio.timeout(timeout):
                response = await upstream.backend.request("GET", "/api/ps", None)
                body = await response.read()
            listed = msgspec.json.decode(body, type=_Loaded) if response.status == 200 else None
        except (GatewayError, TimeoutError, msgspec.DecodeError, UnicodeDecodeError):
            return
        if listed is not None:
            self._set_loaded(upstream, frozenset(model_key(m.name or m.model or "") for m in listed.models))

    def _set_loaded(self, upstream: Upstream, loaded: frozenset[str]) -> None:
        if loaded != upstream.loaded:
            upstream.loaded = loaded
            self.inventory_version += 1

    def _mark_down(self, upstream: Upstream, error: BaseException) -> None:
        if upstream.online:
            log.warning("Ollama server %s is down (%s): skipping it until it answers", upstream.url, error)
            self.health_version += 1
            self.inventory_version += 1
        upstream.online = False

    def _mark_up(self, upstream: Upstream) -> None:
        if not upstream.online:
            log.warning("Ollama server %s is back", upstream.url)
            self.health_version += 1
            self.inventory_version += 1
        upstream.online = True

    # -- routing -----------------------------------------------------------------------------------

    def pinned(self, name: str) -> list[Upstream]:
        """The one server called `name` (the scheduler gave this request a slot there)."""
        if len(self.upstreams) == 1:
            return self.upstreams
        return [u for u in self.upstreams if u.backend.name == name][:1] or self.upstreams[:1]

    def route(self, model: str | None, sticky: bool = False) -> list[Upstream]:
        """The servers to try, best first.

        Only servers that list the model (or whose list is not known yet), unless none does: then all,
        so that a model pulled since the last refresh is found and an unknown one gets Ollama's own 404.
        Online before down (a down server is still tried last: it may be back before the probe says so),
        then fewest requests in flight, ties taken in turn so that sequential traffic is spread too.
        `sticky` orders by configuration instead of load.
        """
        upstreams = self.upstreams
        if len(upstreams) == 1:
            return upstreams
        key = model_key(model) if model else None
        candidates = [u for u in upstreams if u.may_have(key)] or upstreams
        if sticky:
            return sorted(candidates, key=lambda u: not u.online)
        self._turn += 1
        turn, count = self._turn, len(candidates)
        order = sorted(
            range(count),
            key=lambda i: (not candidates[i].online, candidates[i].in_flight, (i - turn) % count),
        )
        return [candidates[i] for i in order]

    async def _send(
        self, candidates: list[Upstream], call: Callable[[ProxyBackend], Awaitable[R]]
    ) -> tuple[R, Upstream]:
        last_error: UpstreamUnavailable | None = None
        for upstream in candidates:
            upstream.in_flight += 1
            try:
                response = await call(upstream.backend)
            except UpstreamUnavailable as error:
                # Not connected, so nothing reached the server: safe to try the next one.
                upstream.in_flight -= 1
                self._mark_down(upstream, error)
                last_error = error
                continue
            except BaseException:
                upstream.in_flight -= 1
                raise
            self._mark_up(upstream)
            return response, upstream
        assert last_error is not None  # candidates is never empty
        raise last_error

    # -- LLMBackend (the gateway's own /chat) -------------------------------------------------------

    async def post(self, path: str, body: bytes, upstream: str | None = None) -> UpstreamResponse:
        model = model_of(body) if self._routes_by_model else None
        candidates = self.pinned(upstream) if upstream is not None else self.route(model)
        response, chosen = await self._send(candidates, lambda backend: backend.post(path, body))
        self._served(chosen, model, response.status)
        return _Counted(response, chosen)

    def _served(self, upstream: Upstream, model: str | None, status: int) -> None:
        # Ollama loads a model to answer for it: it is loaded there now (until /api/ps says otherwise).
        if model and status == 200 and self._routes_by_model:
            key = model_key(model)
            if key not in upstream.loaded:
                self._set_loaded(upstream, upstream.loaded | {key})

    async def models(self, timeout: float) -> list[ModelInfo]:
        """The union of every server's models (first size seen wins); refreshes what routing knows."""
        listings = await asyncio.gather(*(self._probe(u, timeout) for u in self.upstreams))
        answered = [listing for listing in listings if listing is not None]
        if not answered:
            raise UpstreamUnavailable("no Ollama server answered")
        union: dict[str, ModelInfo] = {}
        for listing in answered:
            for model in listing:
                union.setdefault(model.name, model)
        return list(union.values())

    # -- LLMRouter (the pass-through) ---------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        body: RequestBody,
        *,
        model: str | None,
        sticky: bool = False,
        upstream: str | None = None,
    ) -> ProxyResponse:
        candidates = self.pinned(upstream) if upstream is not None else self.route(model, sticky)
        if not isinstance(body, bytes | None):
            # A streamed upload cannot be sent twice: one server only.
            candidates = candidates[:1]
        response, chosen = await self._send(candidates, lambda backend: backend.request(method, path, body))
        if method == "POST":
            self._served(chosen, model, response.status)
        return _CountedProxy(response, chosen)

    async def each(self, path: str, timeout: float) -> list[bytes]:
        answers = await asyncio.gather(*(self._get(u, path, timeout) for u in self.upstreams))
        bodies = [body for body in answers if body is not None]
        if not bodies:
            raise UpstreamUnavailable(f"no Ollama server answered {path}")
        return bodies

    async def _get(self, upstream: Upstream, path: str, timeout: float) -> bytes | None:
        try:
            async with asyncio.timeout(timeout):
                response = await upstream.backend.request("GET", path, None)
                body = await response.read()
        except UpstreamUnavailable as error:
            self._mark_down(upstream, error)
            return None
        except (GatewayError, TimeoutError) as error:
            log.warning("Ollama server %s did not list %s: %s", upstream.url, path, error)
            return None
        self._mark_up(upstream)
        return body if response.status == 200 else None

    def upstream_states(self) -> list[UpstreamState]:
        return [u.state() for u in self.upstreams]
