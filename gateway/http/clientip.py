"""Who is on the other end: the TCP peer, and the client behind trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import hdrs, web

from keygate.config.settings import Network


def peer_ip(request: web.BaseRequest) -> str:
    """The TCP peer address, never derived from headers."""
    transport = request.transport
    if transport is not None:
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            return str(peer[0])
    return "unknown"


def client_ip(request: web.BaseRequest, trusted: Sequence[Network]) -> str:
    """The client address for logs and audit.

    X-Forwarded-For is believed only hop by hop from the right while each hop
    is a configured trusted proxy (OWASP API8: never trust it by default).
    """
    peer = peer_ip(request)
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    values = request.headers.getall(hdrs.X_FORWARDED_FOR, ())
    hops = [h.strip() for v in values for h in v.split(",")]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # garbage in the chain: stop believing it
        if not _is_trusted(hop, trusted):
            return hop
    return peer


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)
