"""The edge's request head parser: the requests the edge may take, read as aiohttp reads them.

:class:`HeadParser` returns a request only when the edge can serve it exactly
as aiohttp's handler would: a whole head within the limits, clean CRLF
framing (no bare CR or LF, NUL, obsolete folding, repeated singleton field),
HTTP/1.0 or 1.1, a known method, an origin-form target of visible ASCII, one
valid Host, no ``Transfer-Encoding``, ``Expect`` or ``Upgrade``, no
``Connection`` naming a framing field, and no body or a ``Content-Length``
one of at most :data:`MAX_BODY` bytes that is already in the buffer. For
anything else it returns None, and the connection goes to aiohttp with every
byte received so far: the edge never answers a framing question.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

import httptools
from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy, istr

from keygate.gateway.errors import BadFraming
from keygate.gateway.pipeline import check_host

METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_VERSIONS: Final = frozenset({"1.0", "1.1"})
# Request-target bytes the edge takes itself: visible ASCII (RFC 9112 §3.2);
# anything else is aiohttp's to judge.
_TARGET_BYTES: Final = bytes(range(0x21, 0x7F))
# Names that send a request to aiohttp: its body, its framing or its protocol
# is something only the full server handles.
_AIOHTTP_ONLY: Final = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
# The largest request body the edge forwards itself (whole, from its buffer).
MAX_BODY: Final = 64 * 1024
# aiohttp's parser names every field it knows by its hdrs constant (see
# aiohttp/_http_parser.pyx find_header); the edge hands on the same names.
_CANONICAL: Final = {
    str(v).lower().encode(): str(v) for v in vars(hdrs).values() if isinstance(v, istr)
}
# Fields aiohttp's request parser refuses to see twice (RFC 9110 singletons).
_SINGLETONS: Final = frozenset(
    name.lower().encode()
    for name in (
        hdrs.CONTENT_LENGTH,
        hdrs.CONTENT_LOCATION,
        hdrs.CONTENT_RANGE,
        hdrs.CONTENT_TYPE,
        hdrs.ETAG,
        hdrs.HOST,
        hdrs.MAX_FORWARDS,
        hdrs.SERVER,
        hdrs.TRANSFER_ENCODING,
        hdrs.USER_AGENT,
    )
)
# A Connection value that may name a framing field: aiohttp's to refuse.
_NOMINATED_FRAMING: Final = re.compile(rb"(?i)content-length|transfer-encoding")
_CRLFCRLF: Final = b"\r\n\r\n"


class Request(NamedTuple):
    """A request as parsed from the buffer; ``size`` bytes of it, body included."""

    method: str
    target: str
    version: str
    headers: CIMultiDictProxy[str]
    keep_alive: bool
    body: bytes
    size: int


class HeadParser:
    """httptools, fed one whole request at a time (its callbacks are here)."""

    __slots__ = (
        "_complete",
        "_header_pairs",
        "_keep_alive",
        "_parser",
        "_url",
        "max_head",
        "max_headers",
    )

    def __init__(self, max_head: int, max_headers: int) -> None:
        # A head longer than either limit may break one: aiohttp judges it (414/431).
        self.max_head = max_head
        self.max_headers = max_headers
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._header_pairs: list[tuple[bytes, bytes]] = []
        self._complete = False
        self._keep_alive = False

    # -- httptools callbacks ----------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_pairs.append((name, value))

    def on_headers_complete(self) -> None:
        # Read now: once the message completes the parser is reset for the next.
        self._keep_alive = self._parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self._complete = True

    # -- parsing ------------------------------------------------------------------------
    def parse(self, buffer: bytes) -> Request | None:
        """The first request in ``buffer`` if the edge may take it, else None."""
        end = buffer.find(_CRLFCRLF, 0, self.max_head)
        if end < 0:
            return None  # a partial head: aiohttp bounds its time and size
        size = end + 4
        head = buffer[:size]
        lines = head.count(b"\r\n")
        if (
            head.count(b"\n") != lines
            or head.count(b"\r") != lines
            or lines - 2 > self.max_headers
            or b"\x00" in head
            or b"\n " in head
            or b"\n\t" in head
        ):
            return None  # bare CR or LF, NUL, obs-fold, too many fields: aiohttp's call
        self._url = b""
        self._header_pairs = []
        self._complete = False
        parser = self._parser
        try:
            parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None
        url = self._url
        if not url.startswith(b"/") or url.translate(None, _TARGET_BYTES) or b"#" in url:
            return None
        version = parser.get_http_version()
        method = parser.get_method().decode("ascii", "replace")
        if version not in _VERSIONS or method not in METHODS:
            return None
        pairs = self._fields(version)
        if pairs is None:
            return None
        fields, length = pairs
        body = b""
        if not self._complete:
            # A body: the edge takes it only whole, small and here already;
            # a larger or slower one streams through aiohttp.
            if length <= 0 or length > MAX_BODY or len(buffer) < size + length:
                return None
            body = buffer[size : size + length]
            try:
                parser.feed_data(body)
            except httptools.HttpParserError:
                return None
            if not self._complete:
                return None
            size += length
        headers = CIMultiDictProxy(CIMultiDict(fields))
        return Request(method, url.decode("ascii"), version, headers, self._keep_alive, body, size)

    def _fields(self, version: str) -> tuple[list[tuple[str, str]], int] | None:
        """(fields as aiohttp names them, Content-Length or -1), or None for aiohttp."""
        pairs: list[tuple[str, str]] = []
        hosts: list[str] = []
        length = -1
        singletons: set[bytes] | None = None
        for raw_name, raw_value in self._header_pairs:
            low_bytes = raw_name.lower()
            # As aiohttp's parser reads a field: a known name in its canonical
            # spelling, the value without trailing whitespace (llhttp strips
            # only the leading OWS).
            name = _CANONICAL.get(low_bytes) or raw_name.decode("utf-8", "surrogateescape")
            value = raw_value.rstrip(b" \t").decode("utf-8", "surrogateescape")
            if low_bytes in _SINGLETONS:
                if singletons is None:
                    singletons = {low_bytes}
                elif low_bytes in singletons:
                    return None  # a repeated singleton field: aiohttp's 400
                else:
                    singletons.add(low_bytes)
            if low_bytes == b"host":
                hosts.append(value)
            elif low_bytes == b"content-length":
                if length >= 0 or not (value.isascii() and value.isdigit()) or len(value) > 9:
                    return None  # repeated or odd: aiohttp's parser judges it
                length = int(value)
            elif low_bytes in _AIOHTTP_ONLY:
                return None
            elif low_bytes == b"connection" and _NOMINATED_FRAMING.search(raw_value):
                return None  # a framing refusal: aiohttp's check_framing answers it
            pairs.append((name, value))
        try:
            check_host(hosts, version == "1.1")
        except BadFraming:
            return None  # aiohttp's check_framing answers it
        return pairs, length
