"""The request head keygate sends upstream, built for the hot path — pure functions.

:func:`upstream_header_pairs` is :func:`gateway.headers.upstream_request_headers`
returning plain (name, value) pairs instead of a multidict: the same names, values
and order, from the same rule tables (tests/gateway/test_upstream.py checks the
two against each other on generated input). :func:`request_head` frames them
with the request line as aiohttp's client would, as bytes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Final

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy

from .headers import (
    _FORWARDED,
    _IDENTITY,
    _KEYGATE_PREFIX,
    _REQUEST_REMOVED,
    _XFF,
    X_KEYGATE_GROUPS,
    X_KEYGATE_KEY_ID,
    X_KEYGATE_KEY_NAME,
    X_KEYGATE_USER,
    _connection_tokens,
    _safe,
)

Pairs = list[tuple[str, str]]
HeaderSource = CIMultiDict[str] | CIMultiDictProxy[str] | Iterable[tuple[str, str]]

_CONNECTION: Final = hdrs.CONNECTION.lower()
_CONTENT_LENGTH: Final = hdrs.CONTENT_LENGTH.lower()
# Methods aiohttp's client sends without "Content-Length: 0" when bodiless.
_BODILESS_METHODS: Final = frozenset(
    {hdrs.METH_GET, hdrs.METH_HEAD, hdrs.METH_OPTIONS, hdrs.METH_TRACE}
)
# RFC 9110 §5.5: HTAB, SP, visible ASCII and obs-text; no other control.
_FIELD_BYTES: Final = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_CRLF: Final = b"\r\n"
# The identity names as keygate spells them, checked before lower-casing.
_IDENTITY_NAMES: Final = frozenset(
    (X_KEYGATE_KEY_ID, X_KEYGATE_KEY_NAME, X_KEYGATE_USER, X_KEYGATE_GROUPS)
)


def upstream_header_pairs(
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    *,
    drop: Collection[str],
    identity: Mapping[str, str] | None,
    client_ip: str,
    proto: str,
    host: str | None,
    request_id: str,
) -> Pairs:
    """What :func:`~gateway.headers.upstream_request_headers` returns, as a list."""
    # Most requests name nothing in Connection and are not transfer-coded:
    # then only the fixed table and the credential's header(s) are removed.
    named: Collection[str] = ()
    if _CONNECTION in headers:
        named = _connection_tokens(headers) - _FORWARDED
    if hdrs.TRANSFER_ENCODING in headers:
        named = {*named, _CONTENT_LENGTH}
    dropped = [name.lower() for name in drop]
    out: Pairs = []
    forwarded_for: list[str] = []
    for name, value in headers.items():
        low = name.lower()
        if low in _REQUEST_REMOVED or low in dropped or (named and low in named):
            continue
        if "_" in low:
            # WSGI-style servers treat "_" and "-" alike (see gateway.headers).
            low = low.replace("_", "-")
            if low in _FORWARDED or low.startswith(_KEYGATE_PREFIX):
                continue
        elif low.startswith(_KEYGATE_PREFIX):
            continue
        elif low == _XFF:
            value = value.strip()
            if value:
                forwarded_for.append(value)
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
    out.append((hdrs.X_REQUEST_ID, request_id if request_id.isprintable() else _safe(request_id)))
    return out


def request_head(
    method: str, target: str, host: str, headers: HeaderSource, has_body: bool
) -> tuple[bytes, bool]:
    """The request line and header block as aiohttp's client frames them, and whether chunked.

    ``Host`` comes first. A body without Content-Length goes chunked; a
    bodiless request other than GET/HEAD/OPTIONS/TRACE says
    ``Content-Length: 0``. Bytes that came in as non-UTF-8 (surrogate-escaped
    by aiohttp's parser) go out unchanged.
    """
    parts = [method, " ", target, " HTTP/1.1\r\nHost: ", host]
    lines = 1
    length_given = chunked = False
    pairs = headers.items() if isinstance(headers, CIMultiDict | CIMultiDictProxy) else headers
    for name, value in pairs:
        parts += ("\r\n", name, ": ", value)
        lines += 1
        if len(name) == 14 and name.lower() == _CONTENT_LENGTH:
            length_given = True
    if not length_given:
        if has_body:
            parts.append("\r\nTransfer-Encoding: chunked")
            lines += 1
            chunked = True
        elif method not in _BODILESS_METHODS:
            parts.append("\r\nContent-Length: 0")
            lines += 1
    parts.append("\r\n\r\n")
    head = "".join(parts).encode("utf-8", "surrogateescape")
    # Header injection: once every allowed byte is taken out, what remains
    # must be exactly the line ends written here (RFC 9110 §5.5, RFC 9112 §2.2).
    if head.translate(None, _FIELD_BYTES) != _CRLF * (lines + 2):
        raise ValueError("control character in the request head")
    return head, chunked
