from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol, runtime_checkable

from ollama_gate.domain.immutable import immutable
from ollama_gate.domain.status import ModelInfo


class UpstreamResponse(Protocol):
    """An open upstream response. Reading raises UpstreamTimeout / UpstreamUnavailable on failure."""

    @property
    def status(self) -> int: ...

    async def read(self) -> bytes:
        """The whole body."""
        ...

    def lines(self) -> AsyncIterator[bytes]:
        """The body line by line, as it arrives, each ending with its newline (one is added to a last line
        that lacks it); empty lines skipped."""
        ...

    def close(self) -> None:
        """Release the connection; an unfinished body aborts it, so Ollama stops generating."""
        ...


class LLMBackend(Protocol):
    """Ollama, reached over HTTP."""

    async def post(self, path: str, body: bytes, upstream: str | None = None) -> UpstreamResponse:
        """Send a JSON request (to the server named `upstream` when there are several); returns once the
        status line is in.

        Raises UpstreamUnavailable when Ollama cannot be reached, UpstreamTimeout when it goes silent.
        """
        ...

    async def models(self, timeout: float) -> list[ModelInfo]:
        """The installed models (`GET /api/tags`) within `timeout` seconds."""
        ...


# -- Pass-through of Ollama's own API and its OpenAI-compatible API, over one or several servers --------


class ProxyResponse(UpstreamResponse, Protocol):
    """An upstream response relayed as it is: its content type, and its body as the bytes arrive."""

    @property
    def content_type(self) -> str:
        """The upstream's Content-Type header ("" when absent)."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The raw body in the pieces it arrives in, never re-split or re-encoded."""
        ...


RequestBody = bytes | AsyncIterable[bytes] | None


class ProxyBackend(LLMBackend, Protocol):
    """One Ollama server, reached at `base_url`."""

    @property
    def base_url(self) -> str: ...

    @property
    def name(self) -> str:
        """What answers and metrics call this server: never its address."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def request(self, method: str, path: str, body: RequestBody) -> ProxyResponse:
        """Send any request (JSON body, raw upload or none); returns once the status line is in.

        Raises UpstreamUnavailable when the server cannot be reached (nothing was sent),
        UpstreamTimeout when it goes silent, UpstreamError when the exchange breaks.
        """
        ...


@immutable
class UpstreamState:
    """One Ollama server as the gateway sees it: reachable or not, requests in flight, models it lists."""

    url: str
    name: str
    online: bool
    in_flight: int
    models: tuple[str, ...]
    loaded: tuple[str, ...] = ()
    models_known: bool = True  # False until its first model list arrived (then it may have any model)


@runtime_checkable
class UpstreamInventory(Protocol):
    def upstream_states(self) -> list[UpstreamState]: ...

    @property
    def health_version(self) -> int:
        """Changes whenever a server is found down or back, by a probe or by a request: whoever caches
        the upstreams' health (the status) knows its copy is out of date."""
        ...

    @property
    def inventory_version(self) -> int:
        """Changes whenever a server's health, model list or loaded models change."""
        ...


class LLMRouter(LLMBackend, UpstreamInventory, Protocol):
    """Every configured Ollama server behind one front: picks the server for each request."""

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
        """Send to a server that has `model` (any server when None), retrying on another one when the
        connection cannot be made. `sticky` prefers the configured order over load, so that requests that
        build on each other (a blob upload, then a create) reach the same server. `upstream` (a name)
        sends to that server only: the GPU scheduler gave the request a slot there."""
        ...

    async def each(self, path: str, timeout: float) -> list[bytes]:
        """`GET path` on every server at once: the bodies of the 200 answers, in configured order.

        Raises UpstreamUnavailable when no server answered 200.
        """
        ...
