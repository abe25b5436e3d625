"""The client address of a request, believing one forwarding header, and only from trusted proxies.

Addresses are normalised (an IPv4-mapped IPv6 address is its IPv4 address, IPv6 is written in one
canonical form), so seven spellings of one address are one caller; an anonymous IPv6 caller is counted
per network prefix, because one user controls a whole /64 at least.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from enum import StrEnum
from typing import TypeAlias

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_IPV6_PREFIX = 64


class ForwardedHeader(StrEnum):
    """The one header a trusted proxy sets; any other forwarding header a client sends is ignored."""

    X_FORWARDED_FOR = "x-forwarded-for"
    FORWARDED = "forwarded"
    X_REAL_IP = "x-real-ip"


# Headers that say a request was relayed: a loopback peer carrying one is not a local admin.
FORWARDING_HEADERS = (
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "via",
)


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated IPs or CIDRs; raises ValueError naming the bad entry."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError as error:
                raise ValueError(f"not an IP address or CIDR: {item!r}") from error
    return tuple(networks)


# Every request resolves its peer's address: the same few thousand texts again and again.
@functools.lru_cache(maxsize=65536)
def parse_ip(text: str) -> Address | None:
    """The address `text` names (brackets and an IPv6 zone allowed), IPv4-mapped ones as IPv4; else None."""
    value = text.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    value = value.partition("%")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=65536)
def normalize_ip(text: str) -> str:
    """One spelling per address: `::ffff:10.0.0.1` and `0:0:0:0:0:ffff:a00:1` are `10.0.0.1`.

    Text that is no address (a Unix socket peer, say) is returned as it is.
    """
    address = parse_ip(text)
    return text if address is None else str(address)


@functools.lru_cache(maxsize=65536)
def quota_address(client_ip: str, ipv6_prefix: int = DEFAULT_IPV6_PREFIX) -> str:
    """The identity an anonymous caller is counted as: its IPv4 address, or its IPv6 network."""
    address = parse_ip(client_ip)
    if not isinstance(address, ipaddress.IPv6Address) or ipv6_prefix >= 128:
        return client_ip
    return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    ip = parse_ip(address)
    return ip is not None and any(ip in network for network in trusted)


def _forwarded_for(values: Sequence[str]) -> list[str]:
    """Addresses named by `Forwarded: for=...` elements (RFC 7239), in order."""
    found = []
    for header in values:
        for element in header.split(","):
            for pair in element.split(";"):
                key, _, value = pair.strip().partition("=")
                if key.strip().lower() == "for":
                    value = value.strip().strip('"')
                    if value.startswith("["):
                        value = value[1:].partition("]")[0]
                    elif value.count(":") == 1:
                        value = value.partition(":")[0]
                    found.append(value)
    return found


def _chain(values: Sequence[str], header: ForwardedHeader) -> list[str]:
    if header is ForwardedHeader.FORWARDED:
        return _forwarded_for(values)
    # X-Real-IP holds one address; a proxy that appends makes it a list like X-Forwarded-For.
    return [hop.strip() for value in values for hop in value.split(",") if hop.strip()]


def client_address(
    peer: str,
    header_values: Sequence[str],
    trusted: Sequence[Network],
    header: ForwardedHeader = ForwardedHeader.X_FORWARDED_FOR,
) -> str:
    """The TCP peer, unless it is a trusted proxy: then the right-most address of `header` that is not
    trusted. If every hop is trusted, the left-most is the client. Always normalised (see `normalize_ip`).

    `header_values` are the values of `header` only: a trusted proxy sets that one header, so whatever
    else a client sent through it (a `Forwarded` beside the proxy's `X-Forwarded-For`) cannot win.
    """
    peer = normalize_ip(peer)
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    chain = _chain(header_values, header)
    for hop in reversed(chain):
        if not _is_trusted(hop, trusted):
            return normalize_ip(hop) if parse_ip(hop) is not None else peer
    return normalize_ip(chain[0]) if chain and parse_ip(chain[0]) is not None else peer
