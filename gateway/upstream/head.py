"""The request head keygate sends upstream, built for the hot path — pure functions.

:func:`request_head` frames the header pairs of
:func:`gateway.headers.upstream_header_pairs` (re-exported here) with the
request line as aiohttp's client would, as bytes.

SECURITY: the framing is keygate's own (docs/security.md, "The framing
invariant"). The caller says what body it will send — none, exactly ``n``
bytes, or a stream of unknown length — and the head declares exactly that.
Any Content-Length or Transfer-Encoding among the pairs is ignored: no header
list a client can influence decides where the upstream thinks the body ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy

from keygate.gateway.request.headers import FRAMING, Pairs, upstream_header_pairs

HeaderSource = CIMultiDict[str] | CIMultiDictProxy[str] | Iterable[tuple[str, str]]

# ``length`` for a body streamed with the chunked coding (size unknown ahead).
CHUNKED: Final = -1
# Methods aiohttp's client sends without "Content-Length: 0" when bodiless.
_BODILESS_METHODS: Final = frozenset(
    {hdrs.METH_GET, hdrs.METH_HEAD, hdrs.METH_OPTIONS, hdrs.METH_TRACE}
)
# RFC 9110 §5.5: HTAB, SP, visible ASCII and obs-text; no other control.
_FIELD_BYTES: Final = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_CRLF: Final = b"\r\n"
_FRAMING_LENGTHS: Final = frozenset(len(name) for name in FRAMING)


def request_head(
    method: str, target: str, host: str, headers: HeaderSource, length: int | None
) -> bytes:
    """The request line and header block as aiohttp's client frames them.

    ``length`` is the body keygate will send: None for none, :data:`CHUNKED`
    for a stream of unknown size, else exactly that many bytes. ``Host``
    comes first and the framing last. A bodiless request other than
    GET/HEAD/OPTIONS/TRACE says ``Content-Length: 0``. Bytes that came in as
    non-UTF-8 (surrogate-escaped by aiohttp's parser) go out unchanged.
    """
    parts = [method, " ", target, " HTTP/1.1\r\nHost: ", host]
    lines = 1
    pairs = headers.items() if isinstance(headers, CIMultiDict | CIMultiDictProxy) else headers
    for name, value in pairs:
        if len(name) in _FRAMING_LENGTHS and name.lower() in FRAMING:
            continue  # never the client's (see the module docstring)
        parts += ("\r\n", name, ": ", value)
        lines += 1
    if length is None:
        if method not in _BODILESS_METHODS:
            parts.append("\r\nContent-Length: 0")
            lines += 1
    elif length == CHUNKED:
        parts.append("\r\nTransfer-Encoding: chunked")
        lines += 1
    elif length >= 0:
        parts += ("\r\nContent-Length: ", str(length))
        lines += 1
    else:
        raise ValueError(f"not a body length: {length}")
    parts.append("\r\n\r\n")
    head = "".join(parts).encode("utf-8", "surrogateescape")
    # Header injection: once every allowed byte is taken out, what remains
    # must be exactly the line ends written here (RFC 9110 §5.5, RFC 9112 §2.2).
    if head.translate(None, _FIELD_BYTES) != _CRLF * (lines + 2):
        raise ValueError("control character in the request head")
    return head


__all__ = ["CHUNKED", "Pairs", "request_head", "upstream_header_pairs"]
