"""The proxy handler: SPEC §5 steps 1–5 for every request outside the admin prefix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from multidict import CIMultiDictProxy
from yarl import URL

from config.settings import Route

from .cache import Principal
from .clientip import peer_ip
from .credentials import (
    Credential,
    find_credential,
    query_values,
    stray_credentials,
    strip_query_param,
)
from .errors import (
    BadPath,
    BadRequest,
    Forbidden,
    KeygateError,
    NotFound,
    TooLarge,
    UpstreamBusy,
)
from .forward import forward
from .pathnorm import is_under, normalise_path
from .policy import upstream_path
from .state import gateway_key, key_id_key, request_id_key, route_key
from .upstream_head import upstream_header_pairs

if TYPE_CHECKING:
    from .state import Gateway


class ExpectationFailed(KeygateError):
    status: ClassVar[int] = 417
    default_code: ClassVar[str] = "expectation_failed"
    default_message: ClassVar[str] = "The only expectation supported is 100-continue."


async def invite_body(request: web.Request, limit: int | None, busy: bool) -> None:
    """Answer ``Expect: 100-continue`` once the request may go ahead (RFC 9110 §10.1.1).

    Called after authentication and authorisation, so a refused client never
    sends its body; a declared body over the route's limit, or a full route,
    is refused before the client is invited to send it either.
    """
    expect = request.headers.get(hdrs.EXPECT)
    if expect is None:
        return
    if expect.strip().lower() != "100-continue":
        raise ExpectationFailed()
    declared = request.content_length
    if limit is not None and declared is not None and declared > limit:
        raise TooLarge()
    if busy:
        raise UpstreamBusy()
    if request.version >= HttpVersion11 and not request.content.is_eof():
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # Interim bytes do not count as the response having started.
        request.writer.output_size = 0


# SECURITY (OWASP API5): frameworks that honour these (Express method-override,
# Rails/Laravel/Symfony "_method", IIS) run the named method instead of the one
# on the request line. The key must be allowed that method too.
_METHOD_OVERRIDES = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")


def override_methods(headers: CIMultiDictProxy[str], raw_query: str) -> list[str]:
    """Every method a request asks its upstream to run instead of its own."""
    found = [v.strip().upper() for name in _METHOD_OVERRIDES for v in headers.getall(name, ())]
    if "_method" in raw_query:
        found += [v.strip().upper() for v in query_values(raw_query, "_method")]
    return found


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


@dataclass(slots=True)
class Resolved:
    """A request's route and credential, before the key is verified (SPEC §5 steps 2–3)."""

    route: Route
    path: str
    query: str
    # None on a public route; then ``drop`` names stray keygate tokens to remove.
    credential: Credential | None
    drop: tuple[str, ...]


def resolve(gw: Gateway, headers: CIMultiDictProxy[str], path: str, query: str) -> Resolved:
    """The route for normalised ``path`` and the request's credential, or raise."""
    route = gw.routes.match(path)
    if route is None:
        raise NotFound("No route matches the request path.", code="no_route")
    if route.public:
        drop: tuple[str, ...] = ()
        stray = stray_credentials(headers, query, gw.sources, gw.verifier.prefix)
        if stray is not None:
            drop = stray.drop_headers
            if stray.drop_query is not None:
                query = strip_query_param(query, stray.drop_query)
        return Resolved(route, path, query, None, drop)
    credential = find_credential(headers, query, gw.sources, gw.verifier.prefix)
    if credential.drop_query is not None:
        query = strip_query_param(query, credential.drop_query)
    return Resolved(route, path, query, credential, credential.drop_headers)


def authorise(
    gw: Gateway,
    resolved: Resolved,
    principal: Principal,
    method: str,
    headers: CIMultiDictProxy[str],
    raw_query: str,
) -> None:
    """Raise 403 unless the key may run ``method`` (and every override it asks for)."""
    route_name = resolved.route.name
    path = resolved.path
    policy = gw.policy
    if not policy.allows(principal.groups, route_name, method, path):
        raise Forbidden("The API key may not do this.")
    for override in override_methods(headers, raw_query):
        if not policy.allows(principal.groups, route_name, override, path):
            raise Forbidden("The API key may not do this.")


def upstream_target(gw: Gateway, resolved: Resolved) -> str:
    """The request target on the route's upstream (SPEC §5: exactly the path checked)."""
    route = resolved.route
    target = gw.upstream_base[route.name].raw_path.rstrip("/") + upstream_path(
        route, resolved.path
    )
    return target + "?" + resolved.query if resolved.query else target


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
    resolved = resolve(gw, request.headers, path, query)
    route = resolved.route
    request[route_key] = route.name
    identity = None
    if resolved.credential is not None:
        verifier = gw.verifier
        digest, principal = verifier.cached(resolved.credential.token)
        if principal is None:
            principal = await verifier.load(digest, resolved.credential.token)
        request[key_id_key] = principal.key_id
        authorise(gw, resolved, principal, request.method, request.headers, query)
        identity = principal.identity
    # upstream_request_headers' result as plain pairs, the cheaper form to send.
    headers = upstream_header_pairs(
        request.headers,
        drop=resolved.drop,
        identity=identity,
        client_ip=peer_ip(request),
        proto=request.scheme,
        host=request.headers.get("Host"),
        request_id=request[request_id_key],
    )
    assert gw.session is not None
    gate = gw.gates[route.name]
    await invite_body(request, route.max_body_bytes, gate.in_flight >= gate.limit)
    return await forward(
        request,
        session=gw.session,
        route=route,
        gate=gate,
        url=upstream_target(gw, resolved),
        headers=headers,
        body_idle_timeout=settings.server.body_idle_timeout,
    )
