"""What the declarations in :mod:`gateway.service.bodies` cannot state themselves.

The checks here are attached to the declared fields they belong to (a URL's
host, a JSON document's size, an RFC 3339 time's zone); :func:`expiry` needs
the clock, so the services call it; the query-parameter helpers serve the list
operations. Each problem is one reason for one field (docs/reference.md#status-codes-and-errors).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from msgspec import UNSET, UnsetType
from yarl import URL

from keygate.gateway.errors import BadRequest, Invalid

MAX_EXPIRY = timedelta(days=365 * 100)
MAX_GRACE_SECONDS = 30 * 86400
MAX_METADATA_BYTES = 16384
# A lifetime: seconds, or a count of a unit ("7d").
DURATION_RE = re.compile(r"([1-9][0-9]{0,9})([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
WITHIN_100_YEARS = "must be within 100 years"
# JSON documents nesting deeper are refused (the admin API's bodies, imported
# records): orjson serialises at most 254 levels, Python's json module gives
# up near 1000, and no field needs more than a handful (metadata is echoed back).
MAX_DEPTH = 64

# Characters no text field may hold: C0 and C1 controls, the Unicode line and
# paragraph separators, and the bidirectional overrides and isolates that make
# text display in another order than it is stored (CVE-2021-42574, "Trojan
# Source"). Descriptions may hold tabs and newlines. Written as regex escapes so
# that the declarations state exactly the same sets as patterns.
REFUSED_CHARS = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
REFUSED_IN_DESCRIPTION = r"\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_REFUSED_RE = re.compile(f"[{REFUSED_CHARS}]")


class Errors(dict[str, str]):
    """Per-field reasons; ``raise_if_any`` turns them into a 422 ``invalid``."""

    def raise_if_any(self) -> None:
        if self:
            raise Invalid(dict(self))


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


# --- checks attached to declared fields ------------------------------------------
def parse_time(raw: str) -> datetime:
    """An RFC 3339 time with a zone, in UTC; ValueError names the problem."""
    try:
        value = datetime.fromisoformat(raw.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be an RFC 3339 time or null") from None
    if value.tzinfo is None:
        raise ValueError("must carry a time zone (for example Z)")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 falls before year 1 in UTC
        raise ValueError(WITHIN_100_YEARS) from None


def time_problem(raw: str) -> str | None:
    try:
        parse_time(raw)
    except ValueError as exc:
        return str(exc)
    return None


def duration_seconds(raw: int | str) -> int:
    """Seconds of a declared lifetime: an integer, or a string like ``"7d"``."""
    if isinstance(raw, int):
        return raw
    match = DURATION_RE.fullmatch(raw)
    assert match is not None  # the declaration's pattern
    return int(match.group(1)) * _UNITS[match.group(2)]


def duration_problem(raw: int | str) -> str | None:
    if duration_seconds(raw) > MAX_EXPIRY.total_seconds():
        return WITHIN_100_YEARS
    return None


def webhook_problem(value: str) -> str | None:
    try:
        url = URL(value)
    except (ValueError, TypeError):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        return "must be an http(s) URL of at most 2048 characters, or null"
    return None


def metadata_problem(value: dict[str, Any]) -> str | None:
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:  # nested past orjson's depth limit, or not JSON
        return "must be JSON nested at most 254 levels deep"
    if b"\\u0000" in encoded:  # PostgreSQL's jsonb cannot hold a NUL character
        return "must not contain NUL characters"
    if len(encoded) > MAX_METADATA_BYTES:
        return f"must serialise to at most {MAX_METADATA_BYTES} bytes"
    return None


# --- the clock ----------------------------------------------------------------------
def expiry(
    expires_at: str | UnsetType | None,
    expires_in: int | str | UnsetType | None,
    errors: Errors,
    now: datetime,
) -> tuple[bool, datetime | None]:
    """(given, value) from a body's declared ``expires_at`` or ``expires_in``
    (UNSET: absent or refused); null means never."""
    if expires_at is not UNSET:
        if expires_at is None:
            return True, None
        value = parse_time(expires_at)
        if value <= now:
            errors["expires_at"] = "must be in the future"
            return False, None
        if value - now > MAX_EXPIRY:
            errors["expires_at"] = WITHIN_100_YEARS
            return False, None
        return True, value
    if expires_in is not UNSET:
        if expires_in is None:
            return True, None
        return True, now + timedelta(seconds=duration_seconds(expires_in))
    return False, None


# --- query parameters ----------------------------------------------------------------
def choice(value: Any, field: str, allowed: tuple[str, ...], errors: Errors) -> str | None:
    if not isinstance(value, str) or value not in allowed:
        errors[field] = "must be one of " + ", ".join(allowed)
        return None
    return value


def query_text(value: str | None, field: str, errors: Errors, *, max_len: int = 200) -> None:
    """A text parameter from a URL query: bounded and free of control characters."""
    if value is None:
        return
    if len(value) > max_len:
        errors[field] = f"must be at most {max_len} characters"
    elif _REFUSED_RE.search(value):
        errors[field] = "must not contain control characters"


def too_deep(value: Any, limit: int) -> bool:
    """Whether arrays/objects nest deeper than ``limit``; iterative, so no recursion limit."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
