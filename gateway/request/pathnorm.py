"""Request-path normalisation (docs/reference.md#the-proxy, step 3) — pure functions.

The gateway checks and forwards exactly one string: the path returned by
:func:`normalise_path`. Everything an upstream might interpret differently from
us (encoded slashes, backslashes, NULs, dot segments with ``;params``) is
refused rather than guessed at, and the result is a strict RFC 3986 ``path``:
only ``pchar``, ``/`` and upper-case ``%XX`` escapes, so it can be appended to
the upstream base URL without any further encoding.
"""

from __future__ import annotations

import re

from keygate.gateway.errors import BadPath

# RFC 3986 §2.3 unreserved characters: the only escapes that may be decoded
# without changing what the path means (§6.2.2.2).
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

# A character outside pchar / "/" (RFC 3986 §3.3): "%", "\", controls,
# non-ASCII, and the gen-delims a path may not hold raw.
_NOT_PCHAR = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/]")

# One token of the slow path: a well-formed escape, a stray "%", or a raw
# character that is not allowed as-is in a path.
_TOKEN = re.compile(r"%([0-9A-Fa-f]{2})|(%)|([^A-Za-z0-9\-._~!$&'()*+,;=:@/])")

# Escapes refused anywhere: "/" and "\" would let a segment be split differently
# upstream; NUL truncates paths in C-based servers; the other controls (CR and
# LF above all) split log lines and headers of upstreams that decode the path
# and echo it, and routers disagree about them (aiohttp's own "." stops at LF).
_REFUSED_ESCAPES = frozenset({0x2F, 0x5C, 0x7F, *range(0x20)})

# "." or ".." followed by path parameters: Tomcat and others strip ";params"
# before resolving dot segments, so "/..;/admin" climbs there but not here.
_DOT_PARAMS = re.compile(r"\.\.?(?:;|%3B)")


def _replace(match: re.Match[str]) -> str:
    hexdigits, stray, raw = match.groups()
    if hexdigits is not None:
        value = int(hexdigits, 16)
        if value in _REFUSED_ESCAPES:
            raise BadPath
        char = chr(value)
        # RFC 3986 §6.2.2.2: decode unreserved; §6.2.2.1: upper-case the rest.
        return char if char in _UNRESERVED else "%" + hexdigits.upper()
    if stray is not None:
        raise BadPath  # "%" not followed by two hex digits
    code = ord(raw)
    if code < 0x20 or code == 0x7F or raw == "\\":
        raise BadPath
    try:
        # aiohttp decodes the request line with surrogateescape; this gives the
        # original bytes back, so the upstream receives what the client sent.
        data = raw.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise BadPath from None
    return "".join(f"%{byte:02X}" for byte in data)


def normalise_path(raw: str) -> str:
    """Return the canonical form of request path ``raw`` or raise :class:`BadPath`.

    Idempotent; returns ``raw`` itself when nothing needs changing.
    """
    if not raw.startswith("/"):
        raise BadPath
    # Fast path: only plain characters, no empty segment, no segment starting
    # with "." (dot segments and their ";params" forms). A char-class search
    # plus two substring tests is ~3x faster than one regex with alternation.
    if _NOT_PCHAR.search(raw) is None and "//" not in raw and "/." not in raw:
        return raw
    decoded = _TOKEN.sub(_replace, raw)
    # RFC 3986 §5.2.4 remove_dot_segments, except that climbing above the root
    # is refused instead of clamped (a client that sends it is probing), and
    # empty segments are merged so "//host/x" can never look like an authority.
    segments = decoded.split("/")
    stack: list[str] = []
    for segment in segments[1:]:
        if segment in ("", "."):
            continue
        if segment == "..":
            if not stack:
                raise BadPath
            stack.pop()
        elif segment[0] == "." and _DOT_PARAMS.match(segment):
            raise BadPath
        else:
            stack.append(segment)
    if not stack:
        return "/"
    # A trailing "/", "/." or "/.." names a directory: keep its trailing slash.
    trailing = segments[-1] in ("", ".", "..")
    return "/" + "/".join(stack) + ("/" if trailing else "")


def is_under(path: str, prefix: str) -> bool:
    """Whether ``path`` equals ``prefix`` or lies below it, segment-wise.

    ``"/"`` covers everything; ``"/billing"`` covers ``"/billing"`` and
    ``"/billing/x"`` but not ``"/billingx"``.
    """
    end = len(prefix)
    if prefix.endswith("/"):
        end -= 1
    if end == 0:
        return True
    # startswith with bounds avoids building prefix + "/" on every call.
    return path.startswith(prefix[:end]) and (len(path) == end or path[end] == "/")
