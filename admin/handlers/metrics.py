"""``GET {admin_prefix}/metrics``: Prometheus' text format (docs/reference.md#metrics).

Scraped from a client in ``[metrics] allow`` without a key (the TCP peer, or
behind ``server.trusted_proxies`` the client its X-Forwarded-For names), or
with a key in the ``admin`` group from anywhere else (401/403 otherwise, as the admin API
answers). With several workers the answer is every worker's totals.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from keygate.admin.auth import authenticate
from keygate.admin.context import gateway
from keygate.gateway.errors import NotFound
from keygate.gateway.http.clientip import client_address, peer_ip, trusted_networks
from keygate.gateway.metrics.exposition import CONTENT_TYPE, render_one
from keygate.gateway.pipeline import split_target
from keygate.gateway.state import metrics_publisher_key


async def metrics(request: web.Request) -> web.Response:
    gw = gateway(request)
    counts = gw.metrics
    if counts is None:
        raise NotFound("Metrics are turned off ([metrics] enabled = false).")
    allow = trusted_networks(gw.settings.metrics.allow)
    # The client, as allowed_ips judge it: behind a trusted proxy, the address
    # its X-Forwarded-For names, so a proxy on loopback does not open the
    # metrics to every client it serves.
    address = client_address(
        peer_ip(request), request.headers.getall(hdrs.X_FORWARDED_FOR, ()), gw.trusted
    )
    if allow is None or address is None or not allow.allows(address):
        _, raw_query = split_target(request.raw_path)
        await authenticate(request, gw, raw_query, admin_only=True)
    publisher = request.config_dict.get(metrics_publisher_key)
    body = publisher.render(gw, counts) if publisher is not None else render_one(gw, counts)
    return web.Response(
        body=body, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE, hdrs.CACHE_CONTROL: "no-store"}
    )
