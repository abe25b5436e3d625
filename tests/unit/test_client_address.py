"""The client address: forwarding headers count only when the TCP peer is a trusted proxy."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ollama_gate.domain.client_address import Network, client_address, parse_networks

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
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in proxies)


@settings(deadline=None, max_examples=300)
@given(peer=addresses, x_forwarded_for=header_lists, forwarded=header_lists, proxies=networks)
def test_headers_from_an_untrusted_peer_change_nothing(
    peer: str, x_forwarded_for: list[str], forwarded: list[str], proxies: tuple[Network, ...]
) -> None:
    assume(not trusted(peer, proxies))
    assert client_address(peer, x_forwarded_for, forwarded, proxies) == peer


@settings(deadline=None, max_examples=300)
@given(peer=addresses, x_forwarded_for=header_lists, forwarded=header_lists)
def test_without_trusted_proxies_the_peer_is_the_client(
    peer: str, x_forwarded_for: list[str], forwarded: list[str]
) -> None:
    assert client_address(peer, x_forwarded_for, forwarded, ()) == peer


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
        assert client_address(peer, [", ".join(chain)], [], PROXIES) == client
    else:
        elements = ", ".join(f'for="[{hop}]"' if ":" in hop else f"for={hop}" for hop in chain)
        assert client_address(peer, [], [elements], PROXIES) == client


@settings(deadline=None, max_examples=300)
@given(peer=st.sampled_from(["10.0.0.1", "fd00::1"]), x_forwarded_for=header_lists, forwarded=header_lists)
def test_behind_a_trusted_proxy_the_client_is_the_peer_or_an_address_from_the_headers(
    peer: str, x_forwarded_for: list[str], forwarded: list[str]
) -> None:
    found = client_address(peer, x_forwarded_for, forwarded, PROXIES)
    if found != peer:
        ipaddress.ip_address(found)  # a real address, never header garbage
        assert found in "".join(forwarded or x_forwarded_for)


def test_several_x_forwarded_for_headers_form_one_chain() -> None:
    assert (
        client_address("10.0.0.1", ["203.0.113.9, 198.51.100.1", "10.2.2.2"], [], PROXIES) == "198.51.100.1"
    )


def test_when_every_hop_is_trusted_the_leftmost_is_the_client() -> None:
    assert client_address("10.0.0.1", ["10.9.9.9, 10.8.8.8"], [], PROXIES) == "10.9.9.9"


@pytest.mark.parametrize(
    "x_forwarded_for", [[], [""], [" , "], ["not-an-ip"], ["203.0.113.9:4711"], ["unknown, 10.1.1.1"]]
)
def test_a_useless_chain_leaves_the_peer(x_forwarded_for: list[str]) -> None:
    assert client_address("10.0.0.1", x_forwarded_for, [], PROXIES) == "10.0.0.1"


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
    assert client_address("10.0.0.1", [], forwarded, PROXIES) == expected


def test_forwarded_wins_over_x_forwarded_for() -> None:
    assert client_address("10.0.0.1", ["198.51.100.1"], ["for=203.0.113.60"], PROXIES) == "203.0.113.60"


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
