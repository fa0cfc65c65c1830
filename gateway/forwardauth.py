"""Forward-auth: the proxy's decision for a request another proxy will forward.

nginx ``auth_request``, Caddy ``forward_auth``, Traefik ``forwardAuth`` and
Envoy ``ext_authz`` ask ``{admin_prefix}/auth`` whether a request may pass
(docs/forward-auth.md). The request to judge is named by headers only a
trusted proxy may send (:func:`original_request`); it is then judged by the
very steps of :mod:`keygate.gateway.pipeline` that proxy mode runs — route,
path normalisation, credential, key, allowed IPs, group rules, rate limits
and quota — minus those about forwarding (the body limit and route slots,
the upstream target and headers), which belong to the proxy that forwards.

Both front ends call these functions: the aiohttp handler
(:mod:`keygate.gateway.http.forwardauth`) and the edge
(:mod:`keygate.gateway.http.edge.authgate`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy

from keygate.gateway import pipeline
from keygate.gateway.auth.cache import Principal
from keygate.gateway.errors import (
    BadRequest,
    Forbidden,
    KeygateError,
    MethodNotAllowed,
    UntrustedProxy,
)
from keygate.gateway.http.clientip import parse_address
from keygate.gateway.limits.rules import Allowlist
from keygate.gateway.limits.usage import Usage
from keygate.gateway.pipeline import Resolved
from keygate.gateway.request.headers import (
    X_KEYGATE_GROUPS,
    X_KEYGATE_KEY_ID,
    X_KEYGATE_KEY_NAME,
    X_KEYGATE_USER,
)

if TYPE_CHECKING:
    from keygate.gateway.state import Gateway

AUTH_PATH: Final = "/auth"
X_FORWARDED_METHOD: Final = "X-Forwarded-Method"
X_FORWARDED_URI: Final = "X-Forwarded-Uri"
X_FORWARDED_HOST: Final = "X-Forwarded-Host"
X_FORWARDED_PROTO: Final = "X-Forwarded-Proto"
X_ORIGINAL_METHOD: Final = "X-Original-Method"
X_ORIGINAL_URI: Final = "X-Original-URI"
X_KEYGATE_ERROR: Final = "X-Keygate-Error"
NO_STORE: Final = (str(hdrs.CACHE_CONTROL), "no-store")

# A public route's answer: the four headers present and empty, so a proxy that
# copies them onto the forwarded request overwrites any a client forged.
ANONYMOUS: Final[Mapping[str, str]] = {
    X_KEYGATE_KEY_ID: "",
    X_KEYGATE_KEY_NAME: "",
    X_KEYGATE_USER: "",
    X_KEYGATE_GROUPS: "",
}
# The methods proxy mode's request parsers take (llhttp's list, which aiohttp's
# parser uses and the edge's hands on to it): any other method, a lower-case
# "get" included, is a 400 there before anything is judged, so it is here too.
HTTP_METHODS: Final = frozenset(
    (
        *("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"),
        *("COPY", "LOCK", "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK"),
        *("BIND", "REBIND", "UNBIND", "ACL", "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE"),
        *("M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PURGE", "MKCALENDAR"),
        *("LINK", "UNLINK", "SOURCE", "QUERY"),
    )
)
# Methods whose requests carry a body the asking proxy keeps to itself: a form
# override travels in one (frameworks read it from a POST; PUT and PATCH for
# good measure).
_WITH_BODY: Final = frozenset(("POST", "PUT", "PATCH"))


def auth_tail(raw_path: str, admin_prefix: str) -> str | None:
    """The part after ``{admin_prefix}/auth`` of a forward-auth request's raw
    path ("" for the endpoint itself; Envoy's ``path_prefix`` puts the original
    path there), or None when ``raw_path`` is not the endpoint."""
    base = admin_prefix + AUTH_PATH
    if not raw_path.startswith(base):
        return None
    tail = raw_path[len(base) :]
    if tail and not tail.startswith("/"):
        return None  # /authx: another admin path
    return tail


@dataclass(slots=True)
class Original:
    """The request a proxy asks about, as it names it."""

    method: str
    target: str  # path and query, as the client sent them
    host: str | None
    proto: str


def _one(values: list[str], name: str) -> str | None:
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"The forward-auth request carries more than one {name} header.")
    return values[0].strip()


def _only(*named: str | None) -> str | None:
    given = [n for n in named if n is not None]
    if len(given) > 1:
        raise BadRequest("The forward-auth request names the request to judge twice.")
    return given[0] if given else None


@functools.lru_cache(maxsize=1024)
def trusted_peer(peer: str, trusted: Allowlist | None) -> bool:
    """Whether ``peer`` is in ``server.trusted_proxies`` (compiled: a reload makes
    a new ``trusted``, so an entry never outlives the setting it was judged by)."""
    address = parse_address(peer)
    return trusted is not None and address is not None and trusted.allows(address)


def original_request(
    gw: Gateway,
    method: str,
    tail: str,
    raw_query: str,
    headers: CIMultiDictProxy[str],
    peer: str,
) -> Original:
    """The request to judge, from a peer in ``server.trusted_proxies`` only
    (else 403 ``untrusted_proxy``): the X-Forwarded-* headers (Traefik, Caddy),
    X-Original-* (nginx), or the path after ``/auth`` (Envoy). ``Forwarded``
    (RFC 7239) is not read: no proxy's forward-auth sends it. The header forms
    need their method header (Envoy's form has the auth request's own), and a
    method or target proxy mode's parsers would refuse is refused: 400."""
    if not trusted_peer(peer, gw.trusted):
        raise UntrustedProxy()
    getall = headers.getall
    # Each proxy names the request one way; a second way present means a
    # client added it and the proxy let it through: judge neither.
    uris = getall(X_FORWARDED_URI, []) + getall(X_ORIGINAL_URI, [])
    target: str | None
    if len(uris) == 1 and not tail:
        target = uris[0].strip()
    else:
        target = _only(
            _one(getall(X_FORWARDED_URI, []), X_FORWARDED_URI),
            _one(getall(X_ORIGINAL_URI, []), X_ORIGINAL_URI),
            tail or None,
        )
        if target is None:
            raise BadRequest(
                "The forward-auth request must name the request to judge "
                "(X-Forwarded-Uri, X-Original-URI or a path after /auth)."
            )
        if tail and raw_query:  # Envoy's path_prefix: the query is the original's
            target += "?" + raw_query
    assert target is not None
    if not _valid_target(target):
        # Proxy mode's parsers take visible ASCII only (RFC 9112 §3.2): a raw
        # space, TAB, control or non-ASCII byte is a 400 there.
        raise BadRequest("The request to judge has a target that is not valid HTTP.")
    methods = getall(X_FORWARDED_METHOD, []) + getall(X_ORIGINAL_METHOD, [])
    if methods:
        if len(methods) > 1:
            raise BadRequest("The forward-auth request names the method twice.")
        method = methods[0].strip()
        if method not in HTTP_METHODS:
            raise BadRequest("The request to judge has a method that is not valid HTTP.")
    elif not tail:
        # A URI in a header without its method would be judged as the auth
        # request's own method (GET, for most proxies): a recipe that forgets
        # the method header must not pass every DELETE as a GET.
        raise BadRequest(
            "The forward-auth request must name the method "
            "(X-Forwarded-Method or X-Original-Method)."
        )
    proto = _one(getall(X_FORWARDED_PROTO, []), X_FORWARDED_PROTO)
    if proto is None:
        proto = "http"
    elif proto not in _PROTOS:
        proto = proto.lower()
        if proto not in _PROTOS:
            raise BadRequest("X-Forwarded-Proto must be http or https.")
    return Original(method, target, _one(getall(X_FORWARDED_HOST, []), X_FORWARDED_HOST), proto)


_PROTOS: Final = frozenset(("http", "https"))


def _valid_target(target: str) -> bool:
    """Whether ``target`` is visible ASCII only, as a request line's target must be."""
    return target.isascii() and target.isprintable() and " " not in target


@dataclass(slots=True)
class Judged:
    """A request under judgement: its route and credential, its key once known."""

    original: Original
    resolved: Resolved
    raw_query: str  # as sent (Resolved.query has keygate's credential taken out)
    headers: CIMultiDictProxy[str]
    digest: bytes
    principal: Principal | None


def target(gw: Gateway, original: Original) -> tuple[str, str]:
    """The normalised path and the query of the request to judge (proxy mode's
    first step, docs/reference.md#the-proxy)."""
    _, path, query = pipeline.request_target(original.target, gw.settings.server.admin_prefix)
    return path, query


def begin(
    gw: Gateway, original: Original, path: str, query: str, headers: CIMultiDictProxy[str]
) -> Judged:
    """The route, the credential and the key from memory, as proxy mode finds
    them (``principal`` None with a credential: ask the store, :func:`admit`)."""
    if original.host is not None and "Destination" in headers:
        # A WebDAV Destination is judged against the client's Host, not ours.
        own = CIMultiDict(headers)
        own[hdrs.HOST] = original.host
        headers = CIMultiDictProxy(own)
    resolved = pipeline.resolve(gw, headers, path, query, original.proto)
    if resolved.credential is None:
        _refuse_tunnel(original)  # a public route: proxy mode's next refusal
    digest, principal = pipeline.admit_cached(gw, resolved)
    return Judged(original, resolved, query, headers, digest, principal)


async def admit(gw: Gateway, judged: Judged) -> Principal:
    """The key behind a cache miss, from the store."""
    principal = judged.principal = await pipeline.admit(gw, judged.resolved, judged.digest)
    return principal


def authorise(gw: Gateway, judged: Judged, peer: str) -> None:
    """Allowed IPs (the client behind the trusted proxy: its X-Forwarded-For),
    group rules, WebDAV Destination and method overrides, as proxy mode checks
    them. A form body the proxy keeps to itself cannot be scanned for a method
    override: where proxy mode would scan it, the answer is 403."""
    principal = judged.principal
    assert principal is not None
    original = judged.original
    check = pipeline.authorise(
        gw,
        judged.resolved,
        principal,
        original.method,
        judged.headers,
        judged.raw_query,
        original.method in _WITH_BODY,
        peer=peer,
    )
    if check is not None:
        raise Forbidden(
            "A method override in the request body cannot be checked in forward-auth mode."
        )
    _refuse_tunnel(original)  # after the group rules and before the limits, as proxy mode


def _refuse_tunnel(original: Original) -> None:
    """405 for CONNECT, which proxy mode refuses once the key is judged: a
    reverse proxy opens no tunnel (RFC 9110 §9.3.6)."""
    if original.method == _CONNECT:
        raise MethodNotAllowed()


_CONNECT: Final = str(hdrs.METH_CONNECT)


def take_now(gw: Gateway, judged: Judged) -> Usage | None:
    """Rate limits and quota from memory (:func:`pipeline.take_now`); None: await
    :func:`take`. The caller keeps the usage's header fields for the answer,
    then calls its ``check()`` (the 429)."""
    principal = judged.principal
    assert principal is not None and principal.limits is not None
    return pipeline.take_now(gw, principal)


async def take(gw: Gateway, judged: Judged) -> Usage:
    principal = judged.principal
    assert principal is not None
    return await pipeline.take(gw, principal)


def identity(judged: Judged) -> Mapping[str, str]:
    """The four X-Keygate-* headers of an allowed request (empty on a public route)."""
    principal = judged.principal
    return ANONYMOUS if principal is None else principal.identity


_ANONYMOUS_PAIRS: Final = (*ANONYMOUS.items(), NO_STORE)


def answer_pairs(judged: Judged) -> tuple[tuple[str, str], ...]:
    """The allowed answer's header pairs: the identity, then no-store."""
    principal = judged.principal
    if principal is None:
        return _ANONYMOUS_PAIRS
    identity = principal.identity
    return (
        (X_KEYGATE_KEY_ID, identity[X_KEYGATE_KEY_ID]),
        (X_KEYGATE_KEY_NAME, identity[X_KEYGATE_KEY_NAME]),
        (X_KEYGATE_USER, identity[X_KEYGATE_USER]),
        (X_KEYGATE_GROUPS, identity[X_KEYGATE_GROUPS]),
        NO_STORE,
    )


def parser_refusal(gw: Gateway, raw_target: str, exc: KeygateError) -> KeygateError:
    """The HTTP parser's refusal (400, 414, 431: before any routing) of a request
    whose target is ``{admin_prefix}/auth``: answered as forward-auth answers
    its own refusals, so ``nginx_compat`` turns it into a 403 nginx can relay."""
    settings = gw.settings
    if not settings.forward_auth.enabled:
        return exc
    raw_path = raw_target.partition("?")[0]
    if auth_tail(raw_path, settings.server.admin_prefix) is None:
        return exc
    return refusal(exc, settings.forward_auth.nginx_compat)


def refusal(exc: KeygateError, nginx_compat: bool) -> KeygateError:
    """The error to answer: never cached by the asking proxy, and with
    ``nginx_compat`` a client-side refusal nginx cannot relay as 403 (its
    auth_request turns any status but 2xx, 401 and 403 into a 500)."""
    headers = dict(exc.headers) if exc.headers else {}
    headers[NO_STORE[0]] = NO_STORE[1]
    status = exc.status
    if nginx_compat and 400 <= status < 500 and status not in (401, 403):
        headers[X_KEYGATE_ERROR] = exc.code
        return Forbidden(exc.message, code=exc.code, details=exc.details, headers=headers)
    # A copy, not the raised one with headers added: a refusal may be kept and
    # raised again (the verifier's memory of refused keys).
    answer = type(exc).__new__(type(exc), *exc.args)
    answer.__dict__.update(exc.__dict__)
    answer.headers = headers
    return answer
