"""Opaque pagination cursors: a tag (which list) and a position, base64url-encoded.

Clients must treat them as opaque; the tag stops a cursor of one list from
being replayed against another.
"""

from __future__ import annotations

import base64
import binascii

from keygate.gateway.errors import Invalid


def encode(tag: str, position: int | str | None) -> str | None:
    if position is None:
        return None
    raw = f"{tag}:{position}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(tag: str, cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raw = ""
    found, sep, position = raw.partition(":")
    if found != tag or not sep or not position or not position.isprintable():
        raise Invalid({"cursor": "not a cursor from a previous page of this list"})
    return position


def decode_int(tag: str, cursor: str) -> int:
    position = decode(tag, cursor)
    if not position.isdigit() or not position.isascii():
        raise Invalid({"cursor": "not a cursor from a previous page of this list"})
    return int(position)
