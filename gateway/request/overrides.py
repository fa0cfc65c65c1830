"""Method overrides: the methods a request asks its upstream to run instead of its own.

Many frameworks run another method than the request line's when a request
says so: Express's method-override, Rack/Rails, Symfony, Laravel and IIS read
a header (``X-HTTP-Method-Override`` and kin), a ``_method`` query parameter or
a ``_method`` field of a form body. keygate checked the request line's method;
an upstream that honours an override would run one the key was never allowed.
So every override signal is found here, and the key must be allowed each
method named (docs/security.md, "Method overrides").

Matching is deliberately wider than any one framework's: a name that some
framework *might* read as an override counts. A false positive costs one more
rule check; a false negative is a bypass.

- Header names are compared case-insensitively with ``-`` and ``_`` alike.
- Parameter names are percent-decoded (``+`` is a space), leading spaces
  dropped and ``.``, ``[`` and spaces read as ``_`` (PHP's rules), compared
  case-insensitively: ``_method``, ``%5Fmethod``, ``_%6Dethod``,
  ``.method`` and ``+_method`` all count.
- Form bodies: ``application/x-www-form-urlencoded``, any ``multipart/*``
  (Rack parses ``multipart/mixed`` too), and a body with no Content-Type
  (Rack reads a POST without one as a form). Fields separated by ``&`` or
  ``;``. Multipart delimiters may end lines with LF alone. A gzip or deflate
  body is scanned decoded (Express's body-parser inflates them).
- JSON bodies (any ``/json`` or ``+json`` type): the string value of a
  top-level ``_method`` key (Laravel reads its input from a JSON body).

All functions are pure; the body scanners (:mod:`.scanners`) take a body
chunk by chunk, so a multi-megabyte upload is scanned as it streams, in
bounded memory.
"""

from __future__ import annotations

import contextlib
import re
from typing import Final

from multidict import CIMultiDictProxy

from keygate.gateway.errors import UnsupportedMediaType
from keygate.gateway.request.scanners import (
    Each,
    FormScanner,
    Inflating,
    JsonObject,
    Multipart,
    Recoded,
    Urlencoded,
    boundary_of,
    method_values,
)

HEADER_NAMES: Final = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
def header_overrides(headers: CIMultiDictProxy[str]) -> list[str]:
    """Methods named by override headers, in any case and ``-``/``_`` spelling."""
    found: list[str] = []
    for name, value in headers.items():
        low = name.lower()
        if "method" in low and low.replace("_", "-") in HEADER_NAMES:
            found += method_values(value)
    return found


def query_overrides(raw_query: str) -> list[str]:
    """Methods named by ``_method``-like parameters of a raw query string."""
    if not raw_query or ("method" not in raw_query.lower() and "%" not in raw_query):
        return []
    scanner = Urlencoded()
    found = scanner.feed(raw_query.encode("utf-8", "surrogateescape"))
    return found + scanner.finish()


# Charsets whose bytes spell "_method" the way UTF-8 does: no decoding needed.
_ASCII_COMPATIBLE: Final = frozenset(
    {"", "utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1"}
)


def form_scanner(content_type: str | None, content_encoding: str | None) -> FormScanner:
    """The scanner for a request body of this type and coding.

    Every body is read as a form, whatever its type says: some frameworks
    parse any POST body as one (the WSGI ``method-override`` middleware), and
    others match the type by prefix (``@fastify/formbody``); every body is
    read as a JSON object too (Koa takes ``application/csp-report`` for
    JSON). A multipart body is also split at its boundary (400 when the
    Content-Type can be read two ways). A body in a charset other than
    ASCII's kin is decoded first (one Python does not know is read as it
    is); gzip and deflate are inflated. A coding this cannot read is 415:
    the body cannot be checked.
    """
    media, _, params = (content_type or "").partition(";")
    media = media.strip().lower()
    # Whatever the type says: Koa reads application/csp-report as JSON, and a
    # scan that finds no form or no object costs little.
    scanners: list[FormScanner] = [Urlencoded(), JsonObject()]
    if media.startswith("multipart/"):
        boundary = boundary_of(params)
        if boundary is not None:
            scanners.append(Multipart(boundary))
    scanner: FormScanner = Each(*scanners)
    charset = _charset(params)
    if charset not in _ASCII_COMPATIBLE:
        # A charset Python does not know ("binary", "unknown-8bit"…): no
        # framework decodes by it either, so the bytes are read as they are.
        with contextlib.suppress(LookupError):
            scanner = Recoded(scanner, charset)
    coding = (content_encoding or "").strip().lower()
    if not coding or coding == "identity":
        return scanner
    if coding in ("gzip", "x-gzip", "deflate"):
        return Inflating(scanner)
    raise UnsupportedMediaType("A request body in this Content-Encoding cannot be checked.")


def _charset(params: str) -> str:
    for name, value in _PARAMS.findall(";" + params):
        if str(name).lower() == "charset":
            return str(value).strip().strip('"').strip().lower()
    return ""


_PARAMS: Final = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
