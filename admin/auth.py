"""The admin sub-app's middleware: canonical paths, authentication, the admin/self-service gate."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from keygate.admin.context import actor_key, gateway
from keygate.admin.responses import no_store
from keygate.gateway.auth.credentials import find_credential
from keygate.gateway.errors import BadPath, MethodNotAllowed
from keygate.gateway.http.clientip import client_ip, peer_ip
from keygate.gateway.pipeline import check_address, split_target
from keygate.gateway.request.pathnorm import normalise_path
from keygate.gateway.service import Actor
from keygate.gateway.state import Gateway, key_id_key


def admin_middleware(*, is_public: Callable[[str], bool]) -> Middleware:
    """Guard every request that reaches the admin sub-app.

    1. The raw path must already be canonical: a dot segment or an escape that
       normalises differently is 400 ``bad_path`` (docs/reference.md#the-proxy), so what was
       checked is exactly what aiohttp routed.
    2. Unless ``is_public(path below the prefix)``, the request authenticates
       with the proxy's credential sources, verifier and cache, and its key's
       effective groups must include ``admin`` or ``self-service`` (403).
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        gw = gateway(request)
        raw_path, raw_query = split_target(request.raw_path)
        if normalise_path(raw_path) != raw_path:
            raise BadPath
        prefix = gw.settings.server.admin_prefix.rstrip("/")
        below = raw_path[len(prefix) :] if raw_path.startswith(prefix) else raw_path
        public = is_public(below)
        if not public:
            request[actor_key] = await authenticate(request, gw, raw_query)
        try:
            response = await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            # RFC 9110 §15.5.6: a 405 lists the allowed methods.
            allow = ", ".join(sorted(exc.allowed_methods))
            raise MethodNotAllowed(headers={hdrs.ALLOW: allow}) from None
        if not public:
            no_store(response)
        return response

    return middleware


async def authenticate(
    request: web.Request, gw: Gateway, raw_query: str, *, admin_only: bool = False
) -> Actor:
    """The caller as an :class:`Actor`; raises 400/401 as the proxy does, 403
    without a role (the ``admin`` group with ``admin_only``, else it or
    ``self-service``), the refusal naming the group needed."""
    credential = find_credential(request.headers, raw_query, gw.sources, gw.verifier.prefix)
    principal = await gw.verifier.verify(credential.token)
    request[key_id_key] = principal.key_id  # for the access log
    limits = principal.limits
    if limits is not None:
        # A key tied to addresses is tied to them here too (rate limits and the
        # quota count proxied requests only).
        check_address(
            gw, limits, peer_ip(request), request.headers.getall(hdrs.X_FORWARDED_FOR, ())
        )
    actor = Actor.from_principal(principal, client_ip(request, gw.trusted))
    if admin_only:
        actor.require_admin()
    else:
        actor.require_key_access()
    return actor
