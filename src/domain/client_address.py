"""The client address of a request, believing forwarding headers only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import TypeAlias

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def _forwarded_for(values: Iterable[str]) -> list[str]:
    """Addresses named by `Forwarded: for=...` elements, in order."""
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


def client_address(
    peer: str,
    x_forwarded_for: Sequence[str],
    forwarded: Sequence[str],
    trusted: Sequence[Network],
) -> str:
    """The TCP peer, unless it is a trusted proxy: then the right-most forwarded address not trusted.

    A header from an untrusted peer changes nothing. `Forwarded` (RFC 7239) is used when present,
    else `X-Forwarded-For`. If every hop is trusted, the left-most address is the client.
    """
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    chain = (
        _forwarded_for(forwarded)
        if forwarded
        else [hop.strip() for header in x_forwarded_for for hop in header.split(",") if hop.strip()]
    )
    for hop in reversed(chain):
        if not _is_trusted(hop, trusted):
            return hop if _is_ip(hop) else peer
    return chain[0] if chain and _is_ip(chain[0]) else peer


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
