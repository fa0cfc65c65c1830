"""Header rewriting for the proxy — pure functions, no I/O.

Requests going upstream lose the hop-by-hop headers (RFC 9110 §7.6.1), the
header that carried the keygate credential and anything a client could use to
impersonate keygate (``X-Keygate-*``, the ``X-Forwarded-*`` family,
``Forwarded``, ``X-Real-IP`` and kin, ``X-Request-Id``), the re-routing
headers (``X-Original-URL`` and kin, unless a route keeps them) and the
framing (keygate frames what it sends itself); keygate then adds its own
identity and forwarded headers.
Responses coming back lose only the hop-by-hop headers (the rule is
:func:`keygate.gateway.upstream.exchange.response_headers`); everything else,
repeated fields such as ``Set-Cookie`` included, passes in order.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Collection, Iterable, Mapping
from typing import Final, TypeAlias
from urllib.parse import quote

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy, istr

from keygate.gateway.auth.credentials import carries_token

Headers: TypeAlias = "CIMultiDictProxy[str] | CIMultiDict[str]"

# keygate's one spelling of it, on every answer and every upstream request.
X_REQUEST_ID: Final = istr("X-Request-Id")
X_KEYGATE_KEY_ID: Final = istr("X-Keygate-Key-Id")
X_KEYGATE_KEY_NAME: Final = istr("X-Keygate-Key-Name")
X_KEYGATE_USER: Final = istr("X-Keygate-User")
X_KEYGATE_GROUPS: Final = istr("X-Keygate-Groups")

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded; it names
# Proxy-Connection (RFC 9112 Appendix C.2.2), sent by old clients. The
# Proxy-* credentials are for a proxy, never the origin (RFC 9110 §11.7).
HOP_BY_HOP: Final = frozenset(
    name.lower()
    for name in (
        hdrs.CONNECTION,
        hdrs.KEEP_ALIVE,
        "Proxy-Connection",
        hdrs.TE,
        hdrs.TRAILER,
        hdrs.TRANSFER_ENCODING,
        hdrs.UPGRADE,
        hdrs.PROXY_AUTHENTICATE,
        hdrs.PROXY_AUTHORIZATION,
    )
)

_KEYGATE_PREFIX: Final = "x-keygate-"
# SECURITY: whole families of identity headers other gateways and auth
# proxies set, and the apps behind them believe (Kong's X-Consumer-*,
# Authelia's Remote-*, client-certificate headers, Cloudflare Access,
# Pomerium, Authentik, oauth2-proxy, Azure, Google IAP and API Gateway, AWS
# ALB). keygate's identity is X-Keygate-*: a client's copy of any of these
# would be believed behind it.
_RESERVED_PREFIXES: Final = (
    _KEYGATE_PREFIX,
    "x-consumer-",
    "x-credential-",
    "x-anonymous-",
    "remote-",
    "x-remote-",
    "x-ssl-client",
    "x-client-cert",
    "x-client-verify",
    "x-forwarded-client-cert",
    "ssl-client-",
    "cf-access-",
    "x-pomerium-",
    "x-authentik-",
    "x-auth-request-",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-ms-client-principal",
    "x-ms-token-",
    "x-goog-authenticated-",
    "x-goog-iap-",
    "x-apigateway-api-userinfo",
    "x-endpoint-api-userinfo",
    "x-amzn-oidc-",
)
# How those start: most names (Host, Accept…) are passed with one set lookup.
_PREFIX_STARTS: Final = frozenset(p[:2] for p in _RESERVED_PREFIXES)
_IDENTITY: Final = frozenset(
    h.lower() for h in (X_KEYGATE_KEY_ID, X_KEYGATE_KEY_NAME, X_KEYGATE_USER, X_KEYGATE_GROUPS)
)
# SECURITY (OWASP API8): names that common frameworks read as the client's
# address, scheme, host, port or path prefix, or as the request path itself
# (RFC 7239 Forwarded; Werkzeug ProxyFix, Rack, Spring; IIS/Symfony
# X-Original-URL and X-Rewrite-URL). keygate is the front proxy: a client's
# copy would be believed behind it, and a path override would bypass the
# path rules keygate checked. keygate speaks only X-Forwarded-*.
_SPOOFABLE: Final = frozenset(
    {
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        # Host overrides some frameworks build links and route on.
        "x-original-host",
        "x-host",
        "x-http-host-override",
        # A second scheme next to keygate's X-Forwarded-Proto (gunicorn
        # refuses the request when the two disagree).
        "x-forwarded-protocol",
        # Identity (the families are _RESERVED_PREFIXES).
        "x-webauth-user",
        "x-authenticated-user",
    }
)
# SECURITY: names that frameworks and proxies read as the path to serve instead
# of the request line's (IIS/Symfony X-Original-URL and X-Rewrite-URL, nginx
# X-Original-URI, Traefik/Caddy X-Forwarded-Uri, X-Forwarded-Path, Envoy's
# X-Envoy-Original-Path, X-HTTP-Path-Override). keygate checked the request
# line's path; honouring one of these behind it would serve another. Removed
# unless a route sets ``strip_rerouting_headers = false`` (docs/security.md).
REROUTING: Final = frozenset(
    {
        "x-original-url",
        "x-original-uri",
        "x-original-path",
        "x-rewrite-url",
        "x-override-url",
        "x-forwarded-uri",
        "x-forwarded-url",
        "x-forwarded-path",
        "x-envoy-original-path",
        "x-http-path-override",
        # The WSGI/CGI mount point and path: gunicorn believes SCRIPT_NAME and
        # PATH_INFO headers from 127.0.0.1 by default and routes on them.
        "x-script-name",
        "x-forwarded-script-name",
        "script-name",
        "path-info",
    }
)
# Names only keygate may say: the ones it sets itself and the spoofable ones.
# A client may neither forge them (any "_" spelling included) nor make keygate
# drop its own by listing them in Connection.
_FORWARDED: Final = (
    frozenset(
        h.lower()
        for h in (
            hdrs.X_FORWARDED_FOR,
            hdrs.X_FORWARDED_PROTO,
            hdrs.X_FORWARDED_HOST,
            X_REQUEST_ID,
        )
    )
    | _SPOOFABLE
)
_XFF: Final = hdrs.X_FORWARDED_FOR.lower()
# SECURITY: framing is keygate's own. The head sent upstream frames exactly
# the body keygate forwards (see gateway/upstream_head.py), so the client's
# Content-Length and Transfer-Encoding never travel in the header pairs; a
# client-controlled header list deciding the upstream framing is how
# "Connection: Content-Length" once smuggled a second request past the checks.
FRAMING: Final = frozenset({hdrs.CONTENT_LENGTH.lower(), hdrs.TRANSFER_ENCODING.lower()})
# Names a Connection header may never remove (RFC 9110 §7.6.1 lets a sender
# nominate hop-by-hop fields; these are not the client's to nominate):
# - framing (refused outright, see connection_nominates_framing);
# - Host, which keygate always writes itself (the nomination is moot);
# - every field keygate sets itself, whose client copies are dropped anyway:
#   a nomination must not remove keygate's own.
_NOT_NOMINABLE: Final = FRAMING | {hdrs.HOST.lower()} | _FORWARDED
# Always removed from requests besides HOP_BY_HOP:
# - Content-Length and Transfer-Encoding: framing is keygate's own (above);
# - Host: the client session derives it from the upstream URL;
# - Expect: the proxy answered "100-continue" to the client itself once the
#   request was allowed (RFC 9110 §10.1.1), so the body is coming anyway and
#   asking the upstream again would only add a round trip;
# - the forwarded names other than X-Forwarded-For, which keygate replaces
#   (or, for the spoofable ones, leaves out).
_REQUEST_REMOVED: Final = (
    HOP_BY_HOP | FRAMING | {hdrs.HOST.lower(), hdrs.EXPECT.lower()} | (_FORWARDED - {_XFF})
)
_REQUEST_REMOVED_REROUTING: Final = _REQUEST_REMOVED | REROUTING

# RFC 9110 §5.5: CR, LF and NUL are never allowed in a field value, other
# controls are unsafe; HTAB is the only control a field value may carry.
_CTL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:@/+=-]{1,200}")
# RFC 9110 §7.2 / RFC 3986 §3.2.2: a Host field is uri-host [":" port]; empty is allowed.
HOST_FIELD: Final = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")


def identity_headers(
    *, key_id: str, key_name: str, user: str, groups: Iterable[str]
) -> dict[str, str]:
    """The ``identity`` mapping for :func:`upstream_header_pairs` and
    forward-auth's answer (docs/reference.md#forwarding); names are
    :func:`identity_value`."""
    return {
        X_KEYGATE_KEY_ID: key_id,
        X_KEYGATE_KEY_NAME: identity_value(key_name),
        X_KEYGATE_USER: identity_value(user),
        X_KEYGATE_GROUPS: ",".join(sorted(groups)),
    }


# Printable ASCII but "%": kept as it is in an identity header value.
_IDENTITY_SAFE: Final = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)


def identity_value(name: str) -> str:
    """A name as an identity header value: unchanged when printable ASCII
    without ``%``; else every other character percent-encoded as its UTF-8
    bytes (RFC 3986 §2.1), ``%`` itself as ``%25``, so that a header value
    never carries CR, LF or non-Latin-1 text and decodes to one name only."""
    if name.isascii() and name.isprintable() and "%" not in name:
        return name
    return quote(name, safe=_IDENTITY_SAFE, errors="surrogatepass")


class RequestIds:
    """New request ids: a random prefix drawn once, then a counter.

    A request id must be unique, not secret: this costs no system call per
    request (``secrets.token_hex`` costs one). The app makes one in each worker
    process, so workers never share a prefix.
    """

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


def request_id_or_new(value: str | None, ids: RequestIds) -> str:
    """The client's X-Request-Id if it is 1–200 safe characters, else a new one."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return ids.new()


# The identity names as keygate spells them, checked before lower-casing.
_IDENTITY_NAMES: Final = frozenset(
    (X_KEYGATE_KEY_ID, X_KEYGATE_KEY_NAME, X_KEYGATE_USER, X_KEYGATE_GROUPS)
)
_CONNECTION: Final = hdrs.CONNECTION.lower()
Pairs: TypeAlias = list[tuple[str, str]]


def upstream_header_pairs(
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    *,
    drop: Collection[str],
    identity: Mapping[str, str] | None,
    client_ip: str,
    proto: str,
    host: str | None,
    request_id: str,
    strip_rerouting: bool = True,
    underscores: bool = False,
    token_prefix: str | None = None,
) -> Pairs:
    """The headers sent upstream for a client request with ``headers``, as pairs.

    ``drop`` names the header(s) that carried the keygate credential; every
    instance is removed. ``identity`` maps the four ``X-Keygate-*`` names (see
    :func:`identity_headers`) to values, or is None on a public route.
    ``host`` is the client's Host header, sent on as X-Forwarded-Host.
    ``strip_rerouting`` removes the :data:`REROUTING` names (a route's
    ``strip_rerouting_headers``). ``underscores`` (a route's
    ``underscores_in_headers``, nginx's name) passes names with ``_`` in
    them on, except the spellings of names keygate controls; by default they
    are dropped as nginx drops them. ``token_prefix``: a header whose value
    holds a well-formed keygate token with that prefix is dropped, whatever
    its name (a cookie, ``X-Auth-Token``…): a token never reaches an
    upstream. Content-Length and Transfer-Encoding are never among them: the
    request head frames the body keygate sends
    (:func:`keygate.gateway.upstream.head.request_head`)."""
    # Most requests name nothing in Connection: then only the fixed table and
    # the credential's header(s) are removed.
    named: Collection[str] = ()
    if _CONNECTION in headers:
        named = _connection_tokens(headers) - _NOT_NOMINABLE
    removed = _REQUEST_REMOVED_REROUTING if strip_rerouting else _REQUEST_REMOVED
    dropped = [name.lower() for name in drop]
    marker = token_prefix + "_" if token_prefix else None
    out: Pairs = []
    forwarded_for: list[str] = []
    for name, value in headers.items():
        low = name.lower()
        if low in removed or low in dropped or (named and low in named):
            continue
        if "_" in low:
            # SECURITY: WSGI/CGI servers read "_" and "-" alike (both become
            # HTTP_X_...), and some take SCRIPT_NAME or REMOTE_USER from a
            # header: X_Keygate_User would reach an app as X-Keygate-User.
            if not underscores:
                continue
            low = low.replace("_", "-")
            if low in removed or low in _FORWARDED or low.startswith(_RESERVED_PREFIXES):
                continue
        elif low[:2] in _PREFIX_STARTS and low.startswith(_RESERVED_PREFIXES):
            continue
        elif low == _XFF:
            value = value.strip()
            if value:
                forwarded_for.append(value)
            continue
        if marker is not None and marker in value and carries_token(value, token_prefix or ""):
            continue
        out.append((name, value))

    # Every value below but the client's own X-Forwarded-For goes through
    # _safe, which changes only values that are not printable.
    forwarded_for.append(client_ip if client_ip.isprintable() else _safe(client_ip))
    if identity is not None:
        for name, value in identity.items():
            if name not in _IDENTITY_NAMES and name.lower() not in _IDENTITY:
                raise ValueError(f"not a keygate identity header: {name!r}")
            out.append((name, value if value.isprintable() else _safe(value)))
    out.append((hdrs.X_FORWARDED_FOR, ", ".join(forwarded_for)))
    out.append((hdrs.X_FORWARDED_PROTO, proto if proto.isprintable() else _safe(proto)))
    if host:
        out.append((hdrs.X_FORWARDED_HOST, host if host.isprintable() else _safe(host)))
    out.append((X_REQUEST_ID, request_id if request_id.isprintable() else _safe(request_id)))
    return out


def connection_nominates_framing(headers: Headers) -> bool:
    """Whether a Connection header names Content-Length or Transfer-Encoding.

    Refused (400, connection closed) rather than ignored: framing is for every
    recipient of a message, never a connection option (RFC 9110 §7.6.1), so a
    client that nominates it is probing how intermediaries disagree about
    where its body ends — the one question a front proxy must never leave open.
    """
    return _CONNECTION in headers and not FRAMING.isdisjoint(_connection_tokens(headers))


def _connection_tokens(headers: Headers) -> set[str]:
    """Lower-cased field names listed in every Connection header (RFC 9110 §7.6.1)."""
    tokens: set[str] = set()
    for value in headers.getall(hdrs.CONNECTION, ()):
        for token in value.split(","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def _safe(value: str) -> str:
    """``value`` with control characters replaced: no header injection upstream."""
    return _CTL.sub(" ", value) if _CTL.search(value) else value
