"""Where a webhook may be sent (docs/webhooks.md#where-a-webhook-may-go).

Checked when a URL is set (:func:`url_problem`, then :func:`address_problem`
on what its name resolves to) and again at every connection
(``resolver.py``), because a name may resolve elsewhere by then (DNS
rebinding). A receiver must be at a global address unless ``allow_private``;
link-local addresses (169.254.0.0/16, where cloud metadata services answer,
and fe80::/10) are refused always. Pure but for the resolution.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from yarl import URL

MAX_URL = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# IPv6 prefixes whose last 32 bits are an IPv4 address a gateway or host
# translates to: NAT64's well-known and local-use prefixes (RFC 6052, RFC 8215),
# SIIT's IPv4-translated addresses (RFC 2765) and the deprecated
# IPv4-compatible addresses (RFC 4291 2.5.5.1). Judged as that IPv4 address.
EMBEDDING = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
    ipaddress.IPv6Network("::/96"),
)


def url_problem(value: str, *, allow_http: bool) -> str | None:
    """What is wrong with ``value`` as a receiver's URL before any resolution,
    or None. An IP literal is judged by :func:`host_problem` too."""
    if len(value) > MAX_URL:
        return f"must be at most {MAX_URL} characters"
    try:
        url = URL(value)
    except (ValueError, TypeError):
        return "is not a URL"
    if url.scheme not in ("http", "https"):
        return "scheme must be https" + (" or http" if allow_http else "")
    if url.scheme == "http" and not allow_http:
        return "scheme must be https (webhooks.allow_http is off)"
    if url.raw_user is not None or url.raw_password is not None or "@" in urlsplit(value).netloc:
        return "must not carry userinfo (user:password@)"
    if not url.raw_host:
        return "has no host"
    return None


def literal(host: str) -> IPAddress | None:
    """The address a host names by itself, or None for a name.

    Besides dotted quads and IPv6, the forms inet_aton takes and resolvers
    honour: ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def address_problem(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why ``address`` may not receive webhooks, or None."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour or _embedded(address)
        if mapped is not None:
            return address_problem(mapped, allow_private=allow_private)
        if address.teredo is not None:  # (server, client): both must pass
            for inner in address.teredo:
                problem = address_problem(inner, allow_private=allow_private)
                if problem is not None:
                    return problem
    if address.is_link_local:
        return "resolves to a link-local address (cloud metadata services live there)"
    if address.is_global and not address.is_multicast:
        return None
    if allow_private and (address.is_private or address.is_loopback):
        return None
    if address.is_loopback:
        return "resolves to a loopback address"
    if address.is_private:
        return "resolves to a private address"
    return "resolves to an address that is not global"


def _embedded(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address in the last 32 bits of a translating prefix, if any
    (``::`` and ``::1`` are themselves, not embeddings)."""
    if int(address) <= 1:
        return None
    for network in EMBEDDING:
        if address in network:
            return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def host_problem(host: str, *, allow_private: bool) -> str | None:
    """An IP literal host judged as an address; a name is judged once resolved."""
    address = literal(host)
    if address is None:
        return None
    plain = host.strip("[]")
    if isinstance(address, ipaddress.IPv4Address) and str(address) != plain:
        return "spells an IPv4 address in a non-standard form"
    problem = address_problem(address, allow_private=allow_private)
    return problem.replace("resolves to", "is") if problem else None
