"""The client address (docs/reference.md#the-client-address): the TCP peer, or
through trusted proxies the rightmost X-Forwarded-For hop that is not one."""

from __future__ import annotations

import ipaddress

import pytest

from keygate.gateway.http.clientip import client_address, parse_address, trusted_networks

TRUSTED = trusted_networks(
    [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:feed::/48")]
)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
        ("203.0.113.7:4711", "203.0.113.7"),
        ("2001:db8::7", "2001:db8::7"),
        ("2001:DB8:0:0::7", "2001:db8::7"),
        ("[2001:db8::7]", "2001:db8::7"),
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("[::ffff:203.0.113.7]:80", "203.0.113.7"),
        ("::ffff:cb00:7107", "203.0.113.7"),
        ("fe80::1%eth0", "fe80::1"),
        ("unknown", None),
        ("", None),
        ("203.0.113.7:http", None),
        ("[2001:db8::7", None),
        ("[2001:db8::7]x", None),
        ("203.0.113.300", None),
        ("_hidden", None),
    ],
)
def test_parse_address_strips_ports_brackets_and_maps(text: str, address: str | None) -> None:
    found = parse_address(text)
    assert (None if found is None else str(found)) == address


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        # An untrusted peer is the client; its X-Forwarded-For is ignored (spoofed).
        ("203.0.113.7", ["198.51.100.1"], "203.0.113.7"),
        ("::ffff:203.0.113.7", ["10.1.1.1"], "203.0.113.7"),
        ("2001:db8::7", ["198.51.100.1"], "2001:db8::7"),
        # A trusted peer: the rightmost hop that is not trusted.
        ("10.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", ["192.0.2.9, 198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", ["192.0.2.9, 198.51.100.1, 10.0.0.2"], "198.51.100.1"),
        ("::ffff:10.0.0.1", ["198.51.100.1:5000"], "198.51.100.1"),
        ("2001:db8:feed::1", ["[2001:db8::9]:443"], "2001:db8::9"),
        # A client's forged hops stand left of what the trusted proxy appended.
        ("10.0.0.1", ["1.1.1.1, 2.2.2.2", "198.51.100.1"], "198.51.100.1"),
        # Several lines are one list, in order.
        ("10.0.0.1", ["192.0.2.9", "10.0.0.5"], "192.0.2.9"),
        # Every hop trusted: the leftmost one reached.
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.3"),
        # No X-Forwarded-For from a trusted peer: the peer.
        ("10.0.0.1", [], "10.0.0.1"),
        # A hop that is no address stops the walk at the last one reached.
        ("10.0.0.1", ["198.51.100.1, garbage"], "10.0.0.1"),
        ("10.0.0.1", ["198.51.100.1, garbage, 10.0.0.2"], "10.0.0.2"),
        ("10.0.0.1", ["garbage, 198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", [""], "10.0.0.1"),
    ],
)
def test_client_address_walks_trusted_proxies(
    peer: str, forwarded: list[str], client: str
) -> None:
    assert str(client_address(peer, forwarded, TRUSTED)) == client


def test_client_address_without_trusted_proxies_is_the_peer() -> None:
    assert str(client_address("10.0.0.1", ["198.51.100.1"], None)) == "10.0.0.1"
    assert client_address("unknown", ["198.51.100.1"], TRUSTED) is None


def test_trusted_networks_take_ipv4_mapped_ones_as_ipv4() -> None:
    trusted = trusted_networks([ipaddress.ip_network("::ffff:10.0.0.0/104")])
    assert str(client_address("10.2.3.4", ["198.51.100.1"], trusted)) == "198.51.100.1"
    assert trusted_networks([]) is None
