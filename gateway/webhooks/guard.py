"""The write-time half of the SSRF guard: is this URL one keygate may send to?

A URL is judged as written (``ssrf.url_problem``, an IP literal by
``ssrf.host_problem``), then every address its host resolves to now. A name
that does not resolve at all is let through: DNS may not be reachable from
where the change is made, and each connection is judged again
(``resolver.py``) anyway.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from aiohttp.abc import AbstractResolver
from yarl import URL

from keygate.config.settings import WebhookSettings
from keygate.gateway.webhooks import ssrf

RESOLVE_TIMEOUT = 3.0  # seconds a write waits for DNS before letting the URL through


async def url_refusal(
    url: str, settings: WebhookSettings, resolver: AbstractResolver | None
) -> str | None:
    """Why ``url`` may not receive webhooks, or None."""
    problem = ssrf.url_problem(url, allow_http=settings.allow_http)
    if problem is not None:
        return problem
    host = URL(url).raw_host or ""
    problem = ssrf.host_problem(host, allow_private=settings.allow_private)
    if problem is not None or ssrf.literal(host) is not None:
        return problem
    for address in await _resolve(host, resolver):
        problem = ssrf.address_problem(address, allow_private=settings.allow_private)
        if problem is not None:
            return problem
    return None


async def _resolve(host: str, resolver: AbstractResolver | None) -> list[ssrf.IPAddress]:
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            if resolver is not None:
                found = [r["host"] for r in await resolver.resolve(host, 0, socket.AF_UNSPEC)]
            else:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, None, type=socket.SOCK_STREAM
                )
                found = [str(info[4][0]) for info in infos]
    except (OSError, TimeoutError, ValueError):
        return []
    out = []
    for text in found:
        try:
            out.append(ipaddress.ip_address(text.split("%")[0]))
        except ValueError:
            continue
    return out
