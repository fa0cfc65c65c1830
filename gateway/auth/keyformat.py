"""The token format (docs/reference.md#token-format) — pure functions.

``<prefix>_<key_id>_<secret><checksum>``: a 12-character ``[0-9a-z]`` key id, a
32-character base62 secret and a 6-character base62 CRC32 of everything before
it. The checksum lets us refuse typos and random strings without touching the
cache or the store, and lets secret scanners recognise our tokens.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import zlib
from dataclasses import dataclass

from keygate.gateway.errors import Unauthorized

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
KEY_ID_LEN = 12
SECRET_LEN = 32
CHECKSUM_LEN = 6
_TAIL_LEN = SECRET_LEN + CHECKSUM_LEN


class TokenFormatError(Unauthorized):
    """A presented string is not a well-formed token with a valid checksum."""

    def __init__(self) -> None:
        super().__init__("The API key is not valid.", code="invalid_api_key")


@dataclass(frozen=True, slots=True)
class ParsedToken:
    prefix: str
    key_id: str
    secret: str
    checksum: str


def base62(n: int, width: int) -> str:
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(BASE62[r])
    return "".join(reversed(out)).rjust(width, "0")


def checksum(body: str) -> str:
    """Base62 CRC32 (unsigned) of ``body``, 6 characters, zero-padded."""
    return base62(zlib.crc32(body.encode("ascii")) & 0xFFFFFFFF, CHECKSUM_LEN)


_KEY_IDS = len(KEY_ID_ALPHABET) ** KEY_ID_LEN


def new_key_id() -> str:
    # One draw, uniform over every id (as 12 draws of a character are), written
    # in base 36: a bulk import makes 100,000 of them.
    n = secrets.randbelow(_KEY_IDS)
    out = []
    for _ in range(KEY_ID_LEN):
        n, r = divmod(n, 36)
        out.append(KEY_ID_ALPHABET[r])
    return "".join(out)


def new_secret() -> str:
    # 32 base62 characters: 32 * log2(62) ≈ 190.5 bits.
    return "".join(secrets.choice(BASE62) for _ in range(SECRET_LEN))


def make_token(prefix: str, key_id: str, secret: str) -> str:
    body = f"{prefix}_{key_id}_{secret}"
    return body + checksum(body)


def generate(prefix: str, key_id: str | None = None) -> tuple[str, str]:
    """A fresh token and its key id (a new one unless ``key_id`` is given, as on roll)."""
    kid = key_id or new_key_id()
    return make_token(prefix, kid, new_secret()), kid


@functools.lru_cache(maxsize=8)
def _shape(prefix: str) -> re.Pattern[str]:
    # ASCII-only classes and \Z: no Unicode digit, no trailing newline slips in.
    return re.compile(
        re.escape(prefix) + rf"_[0-9a-z]{{{KEY_ID_LEN}}}_[0-9A-Za-z]{{{_TAIL_LEN}}}\Z"
    )


def _checksum6(value: int) -> str:
    # base62() unrolled for a 32-bit value (< 62**6): this runs on every request.
    b = BASE62
    value, f = divmod(value, 62)
    value, e = divmod(value, 62)
    value, d = divmod(value, 62)
    value, c = divmod(value, 62)
    a, b1 = divmod(value, 62)
    return b[a] + b[b1] + b[c] + b[d] + b[e] + b[f]


def well_formed(token: str, prefix: str) -> bool:
    """Whether ``token`` is a keygate token: the shape and a valid checksum."""
    if _shape(prefix).match(token) is None:
        return False
    return _checksum6(zlib.crc32(token[:-CHECKSUM_LEN].encode("ascii"))) == token[-CHECKSUM_LEN:]


def check_format(token: str, prefix: str) -> None:
    """Raise :class:`TokenFormatError` unless ``token`` is well formed with a valid
    checksum. The hot-path form of :func:`parse`: no object is built."""
    if not well_formed(token, prefix):
        raise TokenFormatError


# An imported token (docs/reference.md#imported-keys): 16-256 visible ASCII
# characters, anything but a space or a control character.
IMPORTED_MIN = 16
IMPORTED_MAX = 256


def imported_display(token: str) -> tuple[str, str]:
    """(head, last 4) of an imported token's display form ``<head>…<last 4>``:
    the first 4 characters too for a token of 32 or more, so a short token
    never shows a large share of itself."""
    return (token[:4] if len(token) >= 32 else ""), token[-4:]


def parse(token: str, prefix: str) -> ParsedToken:
    """Split and verify ``token``; raise :class:`TokenFormatError` on any defect."""
    check_format(token, prefix)
    p = len(prefix) + 1
    key_id = token[p : p + KEY_ID_LEN]
    tail = token[p + KEY_ID_LEN + 1 :]
    return ParsedToken(prefix, key_id, tail[:SECRET_LEN], tail[SECRET_LEN:])


def digest(token: str) -> bytes:
    """SHA-256 of the whole token: the only form in which a token is stored."""
    return hashlib.sha256(token.encode("ascii")).digest()


def display(prefix: str, key_id: str, last4: str) -> str:
    return f"{prefix}_{key_id}_…{last4}"
