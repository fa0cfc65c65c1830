"""The proxy handler: SPEC §5 steps 1–5 for every request outside the admin prefix."""

from __future__ import annotations

from aiohttp import web
from yarl import URL

from .clientip import peer_ip
from .credentials import find_credential, strip_query_param
from .errors import BadPath, BadRequest, Forbidden, NotFound
from .forward import forward
from .headers import upstream_request_headers
from .pathnorm import is_under, normalise_path
from .policy import upstream_path
from .state import gateway_key, key_id_key, request_id_key, route_key


def split_target(raw_target: str) -> tuple[str, str]:
    """(raw path, raw query) of the request target, as the client sent them.

    An absolute-form target (RFC 9112 §3.2.2) contributes its path only: the
    authority never chooses the upstream.
    """
    if not raw_target.startswith("/"):
        low = raw_target[:8].lower()
        if not (low.startswith("http://") or low.startswith("https://")):
            raise BadRequest("The request target must be a path.")
        url = URL(raw_target, encoded=True)
        return url.raw_path or "/", url.raw_query_string
    path, _, query = raw_target.partition("?")
    if "#" in path:
        raise BadPath
    return path, query


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    gw = request.app[gateway_key]
    settings = gw.settings
    raw_path, query = split_target(request.raw_path)
    path = normalise_path(raw_path)
    admin_prefix = settings.server.admin_prefix
    if is_under(path, admin_prefix):
        # The admin sub-app answers clean admin paths itself; reaching here means
        # an unknown admin path, or a trick that normalises into the prefix.
        if path == raw_path:
            raise NotFound("No such admin endpoint.")
        raise BadPath
    route = gw.routes.match(path)
    if route is None:
        raise NotFound("No route matches the request path.", code="no_route")
    request[route_key] = route.name
    identity = None
    drop: tuple[str, ...] = ()
    if not route.public:
        credential = find_credential(request.headers, query, gw.sources, gw.verifier.prefix)
        verifier = gw.verifier
        digest = verifier.digest_of(credential.token)
        principal = verifier.check_cached(digest)
        if principal is None:
            principal = await verifier.load(digest)
        request[key_id_key] = principal.key_id
        if not gw.policy.allows(principal.groups, route.name, request.method, path):
            raise Forbidden("The API key may not do this.")
        identity = principal.identity
        drop = credential.drop_headers
        if credential.drop_query is not None:
            query = strip_query_param(query, credential.drop_query)
    target = gw.upstream_base[route.name]
    url = URL.build(
        scheme=target.scheme,
        host=target.raw_host or "",
        port=target.explicit_port,
        path=target.raw_path.rstrip("/") + upstream_path(route, path),
        query_string=query,
        encoded=True,
    )
    headers = upstream_request_headers(
        request.headers,
        drop=drop,
        identity=identity,
        client_ip=peer_ip(request),
        proto=request.scheme,
        host=request.headers.get("Host"),
        request_id=request[request_id_key],
    )
    assert gw.session is not None
    return await forward(
        request,
        session=gw.session,
        route=route,
        gate=gw.gates[route.name],
        url=url,
        headers=headers,
        body_idle_timeout=settings.server.body_idle_timeout,
    )
