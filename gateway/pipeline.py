"""The proxy steps (route, credential, rules, upstream target) and the aiohttp handler."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from keygate.config.settings import Route
from keygate.gateway.auth.cache import Principal
from keygate.gateway.auth.credentials import (
    Credential,
    find_credential,
    stray_credentials,
    strip_query_param,
)
from keygate.gateway.auth.policy import upstream_path
from keygate.gateway.errors import (
    BadPath,
    BadRequest,
    Forbidden,
    KeygateError,
    NotFound,
    TooLarge,
    UpstreamBusy,
)
from keygate.gateway.http.clientip import peer_ip
from keygate.gateway.request.body import BodyCheck
from keygate.gateway.request.destination import BadDestination, destination_path
from keygate.gateway.request.headers import Pairs, upstream_header_pairs
from keygate.gateway.request.overrides import form_scanner, header_overrides, query_overrides
from keygate.gateway.request.pathnorm import is_under, normalise_path
from keygate.gateway.state import gateway_key, key_id_key, request_id_key, route_key
from keygate.gateway.upstream.client import forward
from multidict import CIMultiDictProxy
from yarl import URL

if TYPE_CHECKING:
    from keygate.gateway.state import Gateway


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


@dataclass(frozen=True, slots=True)
class Destination:
    """A WebDAV Destination (RFC 4918 §10.3) on the request's route, normalised."""

    path: str
    absolute: bool  # given as an absolute URI (sent on as one)


@dataclass(slots=True)
class Resolved:
    """A request's route and credential, before the key is verified."""

    route: Route
    path: str
    query: str
    # None on a public route; then ``drop`` names stray keygate tokens to remove.
    credential: Credential | None
    drop: tuple[str, ...]
    destination: Destination | None = None


def resolve(
    gw: Gateway, headers: CIMultiDictProxy[str], path: str, query: str, scheme: str
) -> Resolved:
    """The route for normalised ``path`` and the request's credential, or raise."""
    route = gw.routes.match(path)
    if route is None:
        raise NotFound("No route matches the request path.", code="no_route")
    destination = (
        _destination(gw, route, headers, scheme) if _DESTINATION in headers else None
    )
    if route.public:
        drop: tuple[str, ...] = ()
        stray = stray_credentials(headers, query, gw.sources, gw.verifier.prefix)
        if stray is not None:
            drop = stray.drop_headers
            if stray.drop_query is not None:
                query = strip_query_param(query, stray.drop_query)
        return Resolved(route, path, query, None, drop, destination)
    credential = find_credential(headers, query, gw.sources, gw.verifier.prefix)
    if credential.drop_query is not None:
        query = strip_query_param(query, credential.drop_query)
    return Resolved(route, path, query, credential, credential.drop_headers, destination)


_DESTINATION = "Destination"


def _destination(
    gw: Gateway, route: Route, headers: CIMultiDictProxy[str], scheme: str
) -> Destination:
    values = headers.getall(_DESTINATION)
    if len(values) > 1:
        raise BadDestination("The request carries more than one Destination header.")
    path, absolute = destination_path(values[0], headers.get(hdrs.HOST), scheme)
    if gw.routes.match(path) is not route:
        # Another route may be another upstream or another prefix rule: the
        # upstream could not resolve it as the path that was checked.
        raise BadDestination("The Destination header must name a path on the same route.")
    return Destination(path, absolute)


def authorise(
    gw: Gateway,
    resolved: Resolved,
    principal: Principal,
    method: str,
    headers: CIMultiDictProxy[str],
    raw_query: str,
    has_body: bool,
) -> BodyCheck | None:
    """Raise 403 unless the key may run ``method`` here, on a WebDAV Destination
    too, and every method an override asks for (docs/security.md).

    Returns the check a form body must still pass as it streams, if any.
    """
    route = resolved.route
    route_name = route.name
    path = resolved.path
    policy = gw.policy
    groups = principal.groups
    destination = resolved.destination
    if not policy.allows(groups, route_name, method, path):
        raise Forbidden("The API key may not do this.")
    if destination is not None and not policy.allows(groups, route_name, method, destination.path):
        raise Forbidden("The API key may not do this.")
    paths = (path,) if destination is None else (path, destination.path)
    if route.method_override != "check" or all(
        policy.allows_every_method(groups, route_name, p) for p in paths
    ):
        return None  # no override could name a method refused here

    def allowed(override: str) -> bool:
        return all(policy.allows(groups, route_name, override, p) for p in paths)

    for override in header_overrides(headers) + query_overrides(raw_query):
        if not allowed(override):
            raise Forbidden("The API key may not do this.")
    if not has_body:
        return None
    scanner = form_scanner(headers.get(hdrs.CONTENT_TYPE), headers.get(hdrs.CONTENT_ENCODING))
    return None if scanner is None else BodyCheck(scanner, allowed)


def upstream_target(gw: Gateway, resolved: Resolved) -> str:
    """The request target on the route's upstream: exactly the path checked."""
    route = resolved.route
    target = gw.upstream_base[route.name].raw_path.rstrip("/") + upstream_path(
        route, resolved.path
    )
    return target + "?" + resolved.query if resolved.query else target


def upstream_pairs(
    gw: Gateway,
    resolved: Resolved,
    headers: CIMultiDictProxy[str],
    identity: Mapping[str, str] | None,
    *,
    client_ip: str,
    proto: str,
    request_id: str,
) -> Pairs:
    """The header pairs sent upstream (:func:`gateway.headers.upstream_header_pairs`
    with the route's choices), a WebDAV Destination rewritten to the checked path."""
    pairs = upstream_header_pairs(
        headers,
        drop=resolved.drop,
        identity=identity,
        client_ip=client_ip,
        proto=proto,
        host=headers.get(hdrs.HOST),
        request_id=request_id,
        strip_rerouting=resolved.route.strip_rerouting_headers,
    )
    destination = resolved.destination
    if destination is not None:
        route = resolved.route
        base = gw.upstream_base[route.name]
        value = base.raw_path.rstrip("/") + upstream_path(route, destination.path)
        if destination.absolute:
            value = f"{base.scheme}://{base.raw_authority}{value}"
        pairs = [(n, value if n.lower() == "destination" else v) for n, v in pairs]
    return pairs


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
    resolved = resolve(gw, request.headers, path, query, request.scheme)
    route = resolved.route
    request[route_key] = route.name
    identity = None
    check = None
    if resolved.credential is not None:
        verifier = gw.verifier
        digest, principal = verifier.cached(resolved.credential.token)
        if principal is None:
            principal = await verifier.load(digest, resolved.credential.token)
        request[key_id_key] = principal.key_id
        check = authorise(
            gw, resolved, principal, request.method, request.headers, query, request.body_exists
        )
        identity = principal.identity
    headers = upstream_pairs(
        gw,
        resolved,
        request.headers,
        identity,
        client_ip=peer_ip(request),
        proto=request.scheme,
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
        check=check,
    )
