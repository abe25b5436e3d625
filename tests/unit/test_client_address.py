"""The client address: forwarding headers count only when the TCP peer is a trusted proxy."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ollama_gate.domain.client_address import (
    ForwardedHeader,
    Network,
    client_address,
    normalize_ip,
    parse_networks,
    quota_address,
)

PROXIES = parse_networks("10.0.0.0/8, 192.168.1.1, fd00::/8")

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
addresses = st.one_of(ipv4, ipv6)
header_text = st.one_of(
    st.text(),
    st.lists(addresses, max_size=5).map(", ".join),
    st.lists(addresses, max_size=5).map(lambda hops: ", ".join(f'for="{hop}"' for hop in hops)),
)
header_lists = st.lists(header_text, max_size=3)
networks = st.lists(st.ip_addresses().map(lambda ip: ipaddress.ip_network(ip)), max_size=4).map(tuple)


def trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    """An IPv4-mapped IPv6 address is its IPv4 address, as the gateway reads it."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in proxies)


headers = st.sampled_from(list(ForwardedHeader))


@settings(deadline=None, max_examples=300)
@given(peer=addresses, values=header_lists, proxies=networks, header=headers)
def test_headers_from_an_untrusted_peer_change_nothing(
    peer: str, values: list[str], proxies: tuple[Network, ...], header: ForwardedHeader
) -> None:
    assume(not trusted(peer, proxies))
    assert client_address(peer, values, proxies, header) == normalize_ip(peer)


def test_an_ipv4_mapped_peer_is_trusted_as_its_ipv4_address() -> None:
    """Found by hypothesis: `::ffff:0:0` is 0.0.0.0, so a proxy listed as 0.0.0.0 is believed."""
    proxies = parse_networks("0.0.0.0")
    assert client_address("::ffff:0:0", ["0.0.0.1"], proxies) == "0.0.0.1"
    assert client_address("::ffff:0:1", ["0.0.0.1"], proxies) == "0.0.0.1"  # its own address


@settings(deadline=None, max_examples=300)
@given(peer=addresses, values=header_lists, header=headers)
def test_without_trusted_proxies_the_peer_is_the_client(
    peer: str, values: list[str], header: ForwardedHeader
) -> None:
    assert client_address(peer, values, (), header) == normalize_ip(peer)


# A client hop, then hops that may or may not be trusted proxies; the peer is a trusted proxy.
proxy_hops = st.lists(st.sampled_from(["10.1.2.3", "192.168.1.1", "fd00::7", "10.255.0.1"]), max_size=3)


@settings(deadline=None, max_examples=300)
@given(
    spoofed=st.lists(addresses, max_size=3),
    client=addresses,
    proxies_after=proxy_hops,
    peer=st.sampled_from(["10.0.0.1", "192.168.1.1", "fd00::1"]),
    style=st.sampled_from(["x-forwarded-for", "forwarded"]),
)
def test_a_trusted_chain_gives_the_rightmost_untrusted_address(
    spoofed: list[str], client: str, proxies_after: list[str], peer: str, style: str
) -> None:
    """Whatever the client wrote to the left of its own address is ignored: it cannot be verified."""
    assume(not trusted(client, PROXIES))
    chain = [*spoofed, client, *proxies_after]
    if style == "x-forwarded-for":
        assert client_address(peer, [", ".join(chain)], PROXIES) == normalize_ip(client)
    else:
        elements = ", ".join(f'for="[{hop}]"' if ":" in hop else f"for={hop}" for hop in chain)
        assert client_address(peer, [elements], PROXIES, ForwardedHeader.FORWARDED) == normalize_ip(client)


@settings(deadline=None, max_examples=300)
@given(peer=st.sampled_from(["10.0.0.1", "fd00::1"]), values=header_lists, header=headers)
def test_behind_a_trusted_proxy_the_client_is_the_peer_or_an_address_from_the_headers(
    peer: str, values: list[str], header: ForwardedHeader
) -> None:
    found = client_address(peer, values, PROXIES, header)
    if found != peer:
        ipaddress.ip_address(found)  # a real address, never header garbage
        named = set()
        for token in re.split(r'[,;="\[\]\s]+', "\n".join(values)):
            named.add(normalize_ip(token))
            if token.count(":") == 1:  # `for=203.0.113.60:4711`
                named.add(normalize_ip(token.partition(":")[0]))
        assert found in named


def test_several_x_forwarded_for_headers_form_one_chain() -> None:
    assert client_address("10.0.0.1", ["203.0.113.9, 198.51.100.1", "10.2.2.2"], PROXIES) == "198.51.100.1"


def test_when_every_hop_is_trusted_the_leftmost_is_the_client() -> None:
    assert client_address("10.0.0.1", ["10.9.9.9, 10.8.8.8"], PROXIES) == "10.9.9.9"


@pytest.mark.parametrize(
    "x_forwarded_for", [[], [""], [" , "], ["not-an-ip"], ["203.0.113.9:4711"], ["unknown, 10.1.1.1"]]
)
def test_a_useless_chain_leaves_the_peer(x_forwarded_for: list[str]) -> None:
    assert client_address("10.0.0.1", x_forwarded_for, PROXIES) == "10.0.0.1"


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        (["for=203.0.113.60"], "203.0.113.60"),
        (['for="203.0.113.60"'], "203.0.113.60"),
        (['for="203.0.113.60:4711"'], "203.0.113.60"),
        (['for="[2001:db8:cafe::17]"'], "2001:db8:cafe::17"),
        (['for="[2001:db8:cafe::17]:4711"'], "2001:db8:cafe::17"),
        (["For=203.0.113.60;proto=https;by=10.0.0.1"], "203.0.113.60"),
        (["proto=https; for=203.0.113.60 ; host=example.com"], "203.0.113.60"),
        (["for=198.51.100.1, for=203.0.113.60, for=10.3.3.3"], "203.0.113.60"),
        (["for=198.51.100.1", "for=203.0.113.60"], "203.0.113.60"),
        (["for=_hidden"], "10.0.0.1"),
        (["for=unknown"], "10.0.0.1"),
        (["proto=https"], "10.0.0.1"),
    ],
)
def test_forwarded_header_elements(forwarded: list[str], expected: str) -> None:
    assert client_address("10.0.0.1", forwarded, PROXIES, ForwardedHeader.FORWARDED) == expected


def test_only_the_configured_header_is_believed() -> None:
    """Behind a proxy that sets X-Forwarded-For, a client-sent `Forwarded` is just another header: the
    caller of the gateway passes the configured header's values only, so nothing else can win."""
    assert client_address("10.0.0.1", ["198.51.100.1"], PROXIES) == "198.51.100.1"
    assert client_address("10.0.0.1", ["198.51.100.7"], PROXIES, ForwardedHeader.X_REAL_IP) == "198.51.100.7"


@pytest.mark.parametrize(
    "spelling",
    [
        "203.0.113.9",
        "::ffff:203.0.113.9",
        "::FFFF:203.0.113.9",
        "::ffff:cb00:7109",
        "0:0:0:0:0:ffff:203.0.113.9",
        "0000:0000:0000:0000:0000:ffff:cb00:7109",
        "[::ffff:203.0.113.9]",
    ],
)
def test_every_spelling_of_an_ipv4_address_is_one_caller(spelling: str) -> None:
    assert normalize_ip(spelling) == "203.0.113.9"
    assert client_address(spelling, [], ()) == "203.0.113.9"
    assert client_address("10.0.0.1", [spelling], PROXIES) == "203.0.113.9"


def test_ipv6_callers_are_counted_per_prefix() -> None:
    assert (
        quota_address("2001:db8:1:2:aaaa::1") == quota_address("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    )
    assert quota_address("2001:db8:1:3::1") != quota_address("2001:db8:1:2::1")
    assert quota_address("2001:db8:1:2:aaaa::1", 48) == "2001:db8:1::/48"
    assert quota_address("2001:db8::1", 128) == "2001:db8::1"
    assert quota_address("203.0.113.9") == "203.0.113.9"
    assert quota_address("unix-socket") == "unix-socket"


@settings(deadline=None, max_examples=300)
@given(address=ipv6, prefix=st.integers(min_value=1, max_value=128))
def test_an_ipv6_quota_address_is_the_network_that_holds_the_address(address: str, prefix: int) -> None:
    identity = quota_address(normalize_ip(address), prefix)
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is None and prefix < 128:
        assert parsed in ipaddress.ip_network(identity)
        assert ipaddress.ip_network(identity).prefixlen == prefix


def test_parse_networks_reads_ips_and_cidrs() -> None:
    assert parse_networks(" 127.0.0.1 , 10.0.0.0/8,, ::1 ") == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert parse_networks("") == ()
    # A host address with a prefix is widened to its network rather than refused.
    assert parse_networks("10.1.2.3/8") == (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize("text", ["nope", "10.0.0.0/33", "1.2.3.4, localhost", "300.1.1.1"])
def test_parse_networks_names_the_bad_entry(text: str) -> None:
    with pytest.raises(ValueError, match="not an IP address or CIDR"):
        parse_networks(text)
