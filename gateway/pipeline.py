"""The proxy steps, in order — the one sequence both front ends call.

For every request outside the admin prefix (docs/reference.md#the-proxy):

1. :func:`request_target` — split the target, normalise the path, keep the
   admin prefix out of reach;
2. :func:`resolve` — the route by longest prefix, the WebDAV Destination, the
   credential;
3. :func:`admit_cached` / :func:`admit` — the key verified (from memory, or
   from the store on a miss);
4. :func:`authorise` — the key's allowed IPs (:func:`check_address`), then
   the group rules for the method, the Destination and every method
   override; returns the check a form body must still pass;
5. :func:`check_room` — the route's body limit and its free slots;
6. :func:`take_now` / :func:`take` — the key's rate limits, then its quota
   (for a key that has some: ``principal.limits``); the answer carries the
   returned :class:`~keygate.gateway.limits.usage.Usage`'s header fields;
7. :func:`upstream_target` and :func:`upstream_pairs` — what goes upstream.

The aiohttp handler (:mod:`keygate.gateway.http.handler`) and the edge
(:mod:`keygate.gateway.http.edge`) differ only in how bytes come in and go
out; every rule lives here or below (auth/, request/, upstream/).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote

from aiohttp import hdrs
from multidict import CIMultiDictProxy
from yarl import URL

from keygate.config.settings import Route
from keygate.gateway.auth.cache import Principal
from keygate.gateway.auth.credentials import (
    Credential,
    find_credential,
    stray_credentials,
    strip_query_param,
    strip_token_params,
)
from keygate.gateway.auth.policy import upstream_path
from keygate.gateway.errors import (
    BadFraming,
    BadPath,
    BadRequest,
    Forbidden,
    IpNotAllowed,
    KeygateError,
    NotFound,
    TooLarge,
    UpstreamBusy,
)
from keygate.gateway.http.clientip import client_address
from keygate.gateway.limits import notices
from keygate.gateway.limits.rules import KeyLimits
from keygate.gateway.limits.usage import Usage
from keygate.gateway.request.body import BodyCheck
from keygate.gateway.request.destination import BadDestination, destination_path
from keygate.gateway.request.headers import HOST_FIELD, Pairs, upstream_header_pairs
from keygate.gateway.request.overrides import form_scanner, header_overrides, query_overrides
from keygate.gateway.request.pathnorm import is_under, normalise_path
from keygate.gateway.upstream.gate import RouteGate

if TYPE_CHECKING:
    from keygate.gateway.state import Gateway

log = logging.getLogger("keygate")


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


def request_target(raw_target: str, admin_prefix: str) -> tuple[str, str, str]:
    """(raw path, normalised path, raw query) of a proxied request, or raise.

    The admin sub-app answers clean admin paths itself (the router sends them
    there first): one that reaches the proxy is an unknown admin path (404),
    and a trick that normalises into the prefix is a 400.
    """
    raw_path, query = split_target(raw_target)
    path = normalise_path(raw_path)
    if is_under(path, admin_prefix):
        if path == raw_path:
            raise NotFound("No such admin endpoint.")
        raise BadPath
    return raw_path, path, query


def admin_bound(raw_path: str, path: str, admin_prefix: str) -> bool:
    """Whether aiohttp's router could send this target to the admin sub-app.

    Its router decodes escapes (but ``%2F``) before matching the sub-app, so
    the raw, the normalised and the decoded path all count; the edge leaves
    such a request to aiohttp, which routes it first.
    """
    return (
        is_under(path, admin_prefix)
        or is_under(raw_path, admin_prefix)
        or ("%" in raw_path and is_under(unquote(raw_path), admin_prefix))
    )


def check_host(hosts: list[str], http11: bool) -> None:
    """Exactly one valid Host; HTTP/1.0 may go without (RFC 9112 §3.2).

    keygate sends Host on as X-Forwarded-Host, which upstreams build links
    from; a refusal closes the connection (a framing question).
    """
    if len(hosts) > 1 or (not hosts and http11) or (hosts and not HOST_FIELD.fullmatch(hosts[0])):
        raise BadFraming("The request needs exactly one valid Host header.")


@dataclass(frozen=True, slots=True)
class Destination:
    """A WebDAV Destination (RFC 4918 §10.3) on the request's route, normalised."""

    path: str
    absolute: bool  # given as an absolute URI (sent on as one)


@dataclass(slots=True)
class Resolved:
    """A request's route and credential, before the key is verified."""

    route: Route
    # The route's upstream and slots, as resolved: the request keeps them to its
    # end even if a reload replaces the route meanwhile.
    gate: RouteGate
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
    gate = gw.gates[route.name]  # the same configuration as the match: no await between
    destination = (
        _destination(gw, route, headers, scheme) if _DESTINATION in headers else None
    )
    prefix = gw.verifier.prefix
    if route.public:
        drop: tuple[str, ...] = ()
        stray = stray_credentials(headers, query, gw.sources, prefix, gw.verifier.imported)
        if stray is not None:
            drop = stray.drop_headers
            if stray.drop_query is not None:
                query = strip_query_param(query, stray.drop_query)
        return Resolved(
            route, gate, path, strip_token_params(query, prefix), None, drop, destination
        )
    credential = find_credential(headers, query, gw.sources, prefix)
    if credential.drop_query is not None:
        query = strip_query_param(query, credential.drop_query)
    query = strip_token_params(query, prefix)
    return Resolved(route, gate, path, query, credential, credential.drop_headers, destination)


_DESTINATION = "Destination"


def route_name(gw: Gateway, path: str) -> str | None:
    """The name of the route ``path`` would take: for the access log and the
    metrics of a request refused while it was resolved (a missing key)."""
    route = gw.routes.match(path)
    return None if route is None else route.name


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
    *,
    peer: str,
) -> BodyCheck | None:
    """Raise 403 unless the key may be used from the client's address (``peer``
    is the TCP peer) and may run ``method`` here, on a WebDAV Destination too,
    and every method an override asks for (docs/security.md).

    Returns the check a form body must still pass as it streams, if any.
    """
    limits = principal.limits
    if limits is not None and limits.allowlist is not None:
        check_address(gw, limits, peer, headers.getall(_X_FORWARDED_FOR, ()))
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
    return BodyCheck(scanner, allowed)


_X_FORWARDED_FOR = "X-Forwarded-For"


def check_address(
    gw: Gateway, limits: KeyLimits, peer: str, forwarded: list[str] | tuple[str, ...]
) -> None:
    """403 ``ip_not_allowed`` unless the client address (the TCP ``peer``, or
    through ``server.trusted_proxies`` the ``forwarded`` X-Forwarded-For lines)
    is in the key's ``allowed_ips``."""
    allowlist = limits.allowlist
    if allowlist is None:
        return
    address = client_address(peer, forwarded, gw.trusted)
    if address is None or not allowlist.allows(address):
        gw.notice(notices.IP_DENIED, limits.key_id)
        raise IpNotAllowed()


def take_now(gw: Gateway, principal: Principal) -> Usage | None:
    """Count an authorised request against the key's rate limits and quota,
    when the backend decides from memory; None: await :func:`take`.

    The usage's header fields go on the answer, whatever it is; a refused
    request's usage raises its 429 from ``usage.check()``. Call only for a
    key whose ``principal.limits`` is set.
    """
    limits = principal.limits
    assert limits is not None
    if not limits.counted:
        return _UNCOUNTED
    found = gw.limiter.take_now(limits)
    if found is not None and found.refusal is not None:
        _refused(gw, limits, found)
    return found


async def take(gw: Gateway, principal: Principal) -> Usage:
    """:func:`take_now` for a backend that must be asked (Redis); 503
    ``ratelimit_unavailable`` when it cannot be and ``fail_open`` is false."""
    limits = principal.limits
    assert limits is not None
    if not limits.counted:
        return _UNCOUNTED
    found = await gw.limiter.take(limits)
    if found.refusal is not None:
        _refused(gw, limits, found)
    return found


def take_later(gw: Gateway, principal: Principal) -> asyncio.Future[Usage]:
    """:func:`take` as a future, for a caller driven by callbacks (the edge);
    the caller passes its result through :func:`counted`."""
    limits = principal.limits
    assert limits is not None
    return gw.limiter.take_later(limits)


def counted(gw: Gateway, principal: Principal, usage: Usage) -> Usage:
    """A :func:`take_later` result, its refusal noticed as :func:`take` notices it."""
    if usage.refusal is not None:
        assert principal.limits is not None
        _refused(gw, principal.limits, usage)
    return usage


_UNCOUNTED = Usage([])


def _refused(gw: Gateway, limits: KeyLimits, usage: Usage) -> None:
    assert usage.refusal is not None
    event = notices.QUOTA_EXCEEDED if usage.refusal.code == "quota_exceeded" else (
        notices.RATE_LIMITED
    )
    gw.notice(event, limits.key_id)


def admit_cached(gw: Gateway, resolved: Resolved) -> tuple[bytes, Principal | None]:
    """(digest, principal) from memory alone; principal None means "ask the store".

    Raises the 401 when memory already knows the key is refused. A public
    route admits without a key: ``(b"", None)``.
    """
    credential = resolved.credential
    if credential is None:
        return b"", None
    return gw.verifier.cached(credential.token)


async def admit(gw: Gateway, resolved: Resolved, digest: bytes) -> Principal:
    """The key behind a cache miss, from the store (or a refusal from memory)."""
    credential = resolved.credential
    assert credential is not None
    return await gw.verifier.load(digest, credential.token)


def check_room(route: Route, gate: RouteGate, declared: int | None) -> None:
    """The route's body limit (413) and its free upstream slots (503), for an
    allowed request: a refused one learns nothing about either."""
    limit = route.max_body_bytes
    if limit is not None and declared is not None and declared > limit:
        raise TooLarge()
    if gate.in_flight >= gate.limit:
        raise UpstreamBusy()


def internal_error(method: str, target: str) -> KeygateError:
    """A bug, never a traceback to the client: logged once, answered 500."""
    log.exception("internal error on %s %s", method, target.partition("?")[0][:200])
    return KeygateError()


def upstream_target(gw: Gateway, resolved: Resolved) -> str:
    """The request target on the route's upstream: exactly the path checked."""
    route = resolved.route
    target = resolved.gate.base.raw_path.rstrip("/") + upstream_path(route, resolved.path)
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
        underscores=resolved.route.underscores_in_headers,
        token_prefix=gw.verifier.prefix,
    )
    destination = resolved.destination
    if destination is not None:
        route = resolved.route
        base = resolved.gate.base
        value = base.raw_path.rstrip("/") + upstream_path(route, destination.path)
        if destination.absolute:
            value = f"{base.scheme}://{base.raw_authority}{value}"
        pairs = [(n, value if n.lower() == "destination" else v) for n, v in pairs]
    return pairs
