"""The aiohttp front end of forward-auth: ``{admin_prefix}/auth`` on a ``web.Request``.

The decision is :mod:`keygate.gateway.forwardauth`'s; the edge answers the
same requests in :mod:`keygate.gateway.http.edge.authgate`.
"""

from __future__ import annotations

from aiohttp import web

from keygate.gateway import forwardauth, pipeline
from keygate.gateway.errors import KeygateError, NotFound
from keygate.gateway.http.clientip import peer_ip
from keygate.gateway.metrics.counts import FORWARD_AUTH
from keygate.gateway.state import gateway_key, key_id_key, mode_key, ratelimit_key, route_key


async def forward_auth_handler(request: web.Request) -> web.StreamResponse:
    gw = request.app[gateway_key]
    settings = gw.settings
    raw_path, _, raw_query = request.raw_path.partition("?")
    tail = forwardauth.auth_tail(raw_path, settings.server.admin_prefix)
    if not settings.forward_auth.enabled or tail is None:
        raise NotFound("No such admin endpoint.")
    request[mode_key] = FORWARD_AUTH
    try:
        peer = peer_ip(request)
        original = forwardauth.original_request(
            gw, request.method, tail, raw_query, request.headers, peer
        )
        path, query = forwardauth.target(gw, original)
        try:
            judged = forwardauth.begin(gw, original, path, query, request.headers)
        except KeygateError:
            name = pipeline.route_name(gw, path)
            if name is not None:
                request[route_key] = name  # the access log's and the metrics'
            raise
        request[route_key] = judged.resolved.route.name
        if judged.resolved.credential is not None:
            principal = judged.principal
            if principal is None:
                principal = await forwardauth.admit(gw, judged)
            request[key_id_key] = principal.key_id
            forwardauth.authorise(gw, judged, peer)
            if principal.limits is not None:
                usage = forwardauth.take_now(gw, judged)
                if usage is None:
                    usage = await forwardauth.take(gw, judged)
                request[ratelimit_key] = usage
                usage.check()
    except KeygateError as exc:
        raise forwardauth.refusal(exc, settings.forward_auth.nginx_compat) from None
    headers = dict(forwardauth.identity(judged))
    headers[forwardauth.NO_STORE[0]] = forwardauth.NO_STORE[1]
    return web.Response(status=200, headers=headers)
