"""Who is on the other end: the TCP peer, and the client behind trusted proxies.

The client address (docs/reference.md#the-client-address) is the TCP peer,
unless the peer is in ``server.trusted_proxies``: then ``X-Forwarded-For`` is
walked from the right, every line of it as one list (RFC 9110 §5.3), skipping
hops that are trusted proxies too; the first one that is not is the client
(OWASP API8: X-Forwarded-For is never believed by default). A hop may carry a
port (``203.0.113.7:4711``, ``[2001:db8::7]:443``) or brackets; an IPv4-mapped
IPv6 address is the IPv4 address it maps. A hop that is not an address stops
the walk: the client is then the last address reached (the proxy that wrote
it). The address decides a key's ``allowed_ips`` and is what logs and audit
records show.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from aiohttp import hdrs, web

from keygate.gateway.limits.rules import Address, Allowlist, Network, parse_network


def peer_ip(request: web.BaseRequest) -> str:
    """The TCP peer address, never derived from headers."""
    transport = request.transport
    if transport is not None:
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            return str(peer[0])
    return "unknown"


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> Address | None:
    """An address as a peer or an ``X-Forwarded-For`` hop gives it, or None."""
    text = text.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        text = inner
    elif text.count(":") == 1:  # v4:port
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
        text = host
    text = text.partition("%")[0]  # a zone names a local interface, not a host
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def trusted_networks(networks: Iterable[Network]) -> Allowlist | None:
    """``server.trusted_proxies`` compiled (IPv4-mapped ones as IPv4); None when empty."""
    nets = [parse_network(str(n)) for n in networks]
    return Allowlist(nets) if nets else None


def client_address(
    peer: str, forwarded: Sequence[str], trusted: Allowlist | None
) -> Address | None:
    """The client's address (see the module docstring); None when the peer has none."""
    address = parse_address(peer)
    if trusted is None or address is None or not trusted.allows(address):
        return address
    hops = [hop for line in forwarded for hop in line.split(",")]
    for hop in reversed(hops):
        found = parse_address(hop)
        if found is None:
            return address  # garbage in the chain: believe nothing left of it
        address = found
        if not trusted.allows(found):
            return found
    return address


def client_ip(request: web.BaseRequest, trusted: Allowlist | None) -> str:
    """The client address as text, for logs and audit records."""
    peer = peer_ip(request)
    address = client_address(peer, request.headers.getall(hdrs.X_FORWARDED_FOR, ()), trusted)
    return peer if address is None else str(address)
