"""What aiohttp's parser lets through but a proxy must not relay (aiohttp front end).

The edge never sees these questions: it hands any request with framing in
doubt to aiohttp, and this check, run by the error middleware before any
handler, refuses it. Every refusal is a :class:`~keygate.gateway.errors.BadFraming`:
the connection closes after it.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion10, HttpVersion11

from keygate.gateway.errors import BadFraming
from keygate.gateway.pipeline import check_host
from keygate.gateway.request.headers import connection_nominates_framing


def check_framing(request: web.BaseRequest) -> None:
    """Refuse what aiohttp's parser lets through but a proxy must not relay.

    - Only HTTP/1.0 and 1.1: a request line without a version parses as
      HTTP/0.9, which has no header block, yet the headers after it are kept.
    - Exactly one valid Host (HTTP/1.0 may go without).
    - Transfer-Encoding must be exactly ``chunked`` (RFC 9112 §6.1): the
      parser removes the chunked coding and ignores any other, and hop-by-hop
      removal would drop the header, so ``gzip, chunked`` would reach the
      upstream as a plain body. HTTP/1.0 has no transfer codings at all: such
      framing is faulty (RFC 9112 §6.1).
    - No Connection header may name Content-Length or Transfer-Encoding
      (:func:`~keygate.gateway.request.headers.connection_nominates_framing`).

    Each refusal is a :class:`BadFraming`: the connection closes after it.
    """
    if request.version not in (HttpVersion10, HttpVersion11):
        raise BadFraming()
    check_host(request.headers.getall(hdrs.HOST, []), request.version == HttpVersion11)
    codings = request.headers.getall(hdrs.TRANSFER_ENCODING, ())
    if codings:
        tokens = [t.strip().lower() for v in codings for t in v.split(",")]
        if request.version == HttpVersion10 or tokens != ["chunked"]:
            raise BadFraming()
    if connection_nominates_framing(request.headers):
        raise BadFraming()
