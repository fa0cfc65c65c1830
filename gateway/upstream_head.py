"""The request head keygate sends upstream, built for the hot path — pure functions.

:func:`request_head` frames the header pairs of
:func:`gateway.headers.upstream_header_pairs` (re-exported here) with the
request line as aiohttp's client would, as bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy

from .headers import Pairs, upstream_header_pairs

HeaderSource = CIMultiDict[str] | CIMultiDictProxy[str] | Iterable[tuple[str, str]]

_CONTENT_LENGTH: Final = hdrs.CONTENT_LENGTH.lower()
# Methods aiohttp's client sends without "Content-Length: 0" when bodiless.
_BODILESS_METHODS: Final = frozenset(
    {hdrs.METH_GET, hdrs.METH_HEAD, hdrs.METH_OPTIONS, hdrs.METH_TRACE}
)
# RFC 9110 §5.5: HTAB, SP, visible ASCII and obs-text; no other control.
_FIELD_BYTES: Final = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_CRLF: Final = b"\r\n"


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


__all__ = ["Pairs", "request_head", "upstream_header_pairs"]
