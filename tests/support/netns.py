"""A network namespace joined to this host by a veth pair made for one test: a real non-loopback peer.

The host side of the pair gets `10.213.N.1/30`, the namespace side `10.213.N.2/30`, with N chosen so
that no address or route of this machine is already in `10.213.N.0/24`. Test traffic therefore only ever
crosses the veth pair the test made; no other interface of the machine is touched. Needs root (or
CAP_NET_ADMIN) and the `ip` tool; `NamespaceUnavailable` says why when they are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

SUBNET_PREFIX = "10.213"


class NamespaceUnavailable(Exception):
    """This machine does not let the test create a network namespace (the reason is the message)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise NamespaceUnavailable(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


@dataclass(frozen=True)
class VethNamespace:
    name: str
    host_interface: str
    host_address: str
    peer_address: str

    def run(self, argv: Sequence[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, timeout=timeout
        )

    def http(
        self, method: str, url: str, headers: dict[str, str] | None = None, json_body: str | None = None
    ) -> tuple[int, str]:
        """(status, body) of one HTTP request sent from inside the namespace with curl."""
        argv = ["curl", "-sS", "--noproxy", "*", "--max-time", "10", "-X", method, "-o", "-"]
        argv += ["-w", "\n%{http_code}"]
        for name, value in (headers or {}).items():
            argv += ["-H", f"{name}: {value}"]
        if json_body is not None:
            argv += ["-H", "Content-Type: application/json", "--data", json_body]
        result = self.run([*argv, url])
        if result.returncode != 0:
            raise RuntimeError(f"curl in {self.name} failed ({result.returncode}): {result.stderr.strip()}")
        body, _, status = result.stdout.rpartition("\n")
        return int(status), body


def _free_subnet_index() -> int:
    """An N for 10.213.N.0/30 that nothing on this machine uses yet."""
    in_use = _ip("-o", "-4", "addr", "show").stdout + _ip("-4", "route", "show", "table", "all").stdout
    start = os.getpid() % 200 + 20
    for offset in range(256):
        index = (start + offset) % 256
        if f"{SUBNET_PREFIX}.{index}." not in in_use:
            return index
    raise NamespaceUnavailable(f"every {SUBNET_PREFIX}.N.0/24 is in use on this machine")


@contextmanager
def veth_namespace() -> Iterator[VethNamespace]:
    """Create the namespace and the veth pair; both are removed on exit, whatever happened."""
    if shutil.which("ip") is None:
        raise NamespaceUnavailable("the `ip` tool (iproute2) is not installed")
    if shutil.which("curl") is None:
        raise NamespaceUnavailable("curl is not installed")
    index = _free_subnet_index()
    tag = f"{os.getpid() % 100000}x{index}"
    namespace = VethNamespace(
        name=f"ogate-{tag}",
        host_interface=f"ogh{tag}"[:15],
        host_address=f"{SUBNET_PREFIX}.{index}.1",
        peer_address=f"{SUBNET_PREFIX}.{index}.2",
    )
    peer_interface = f"ogn{tag}"[:15]
    _ip("netns", "add", namespace.name)
    try:
        _ip("link", "add", namespace.host_interface, "type", "veth", "peer", "name", peer_interface)
        _ip("link", "set", peer_interface, "netns", namespace.name)
        _ip("addr", "add", f"{namespace.host_address}/30", "dev", namespace.host_interface)
        _ip("link", "set", namespace.host_interface, "up")
        _ip(
            "netns",
            "exec",
            namespace.name,
            "ip",
            "addr",
            "add",
            f"{namespace.peer_address}/30",
            "dev",
            peer_interface,
        )
        _ip("netns", "exec", namespace.name, "ip", "link", "set", peer_interface, "up")
        yield namespace
    finally:
        # Deleting the namespace destroys its end of the pair and with it the host end; the explicit
        # delete covers a failure before the peer end was moved into the namespace.
        _ip("netns", "del", namespace.name, check=False)
        _ip("link", "del", namespace.host_interface, check=False)
