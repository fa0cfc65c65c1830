"""Field validation shared by every service: each check adds a reason to ``errors``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from keygate.gateway.errors import BadRequest, Invalid
from yarl import URL

GROUP_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
DURATION_RE = re.compile(r"([1-9][0-9]{0,9})([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_EXPIRY = timedelta(days=365 * 100)
# An http(s) URI of RFC 3986 characters only (§2: unreserved, reserved and
# percent-encoded octets): no spaces, controls or raw non-ASCII.
URI_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+$"
URI_RE = re.compile(URI_PATTERN)
MAX_METADATA_BYTES = 16384
MAX_GRACE_SECONDS = 30 * 86400

# Characters no text field may hold: C0 and C1 controls, the Unicode line and
# paragraph separators, and the bidirectional overrides and isolates that make
# text display in another order than it is stored (CVE-2021-42574, "Trojan
# Source"). Descriptions may hold tabs and newlines. Written as regex escapes so
# that admin/schemas.py states exactly the same sets as patterns.
REFUSED_CHARS = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
REFUSED_IN_DESCRIPTION = r"\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_REFUSED_RE = re.compile(f"[{REFUSED_CHARS}]")
_REFUSED_IN_DESCRIPTION_RE = re.compile(f"[{REFUSED_IN_DESCRIPTION}]")


class Errors(dict[str, str]):
    """Per-field reasons; ``raise_if_any`` turns them into a 422 ``invalid``."""

    def raise_if_any(self) -> None:
        if self:
            raise Invalid(dict(self))


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def reject_unknown(body: Mapping[str, Any], allowed: frozenset[str], errors: Errors) -> None:
    for name in body:
        if name not in allowed:
            errors[str(name)[:100]] = "unknown field"


def text(
    value: Any, field: str, errors: Errors, *, min_len: int = 0, max_len: int
) -> str | None:
    if not isinstance(value, str):
        errors[field] = "must be a string"
        return None
    if not min_len <= len(value) <= max_len:
        errors[field] = f"must be {min_len}-{max_len} characters"
        return None
    if _REFUSED_IN_DESCRIPTION_RE.search(value):
        errors[field] = "must not contain control characters"
        return None
    return value


def key_name(value: Any, errors: Errors, field: str = "name") -> str | None:
    name = text(value, field, errors, min_len=1, max_len=100)
    if name is not None and (_REFUSED_RE.search(name) or name != name.strip()):
        errors[field] = "must be one line without leading or trailing spaces"
        return None
    return name


def group_names(value: Any, errors: Errors, field: str = "groups") -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        errors[field] = "must be a list of group names"
        return None
    if len(value) > 100:
        errors[field] = "must name at most 100 groups"
        return None
    bad = [g for g in value if not GROUP_NAME_RE.match(g)]
    if bad:
        errors[field] = "invalid group name"
        return None
    return sorted(set(value))


def expiry(body: Mapping[str, Any], errors: Errors, now: datetime) -> tuple[bool, datetime | None]:
    """(given, value) from ``expires_at`` or ``expires_in``; null means never."""
    if "expires_at" in body and "expires_in" in body:
        errors["expires_in"] = "give expires_at or expires_in, not both"
        return False, None
    if "expires_at" in body:
        raw = body["expires_at"]
        if raw is None:
            return True, None
        if not isinstance(raw, str):
            errors["expires_at"] = "must be an RFC 3339 time or null"
            return False, None
        try:
            value = datetime.fromisoformat(raw.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            errors["expires_at"] = "must be an RFC 3339 time or null"
            return False, None
        if value.tzinfo is None:
            errors["expires_at"] = "must carry a time zone (for example Z)"
            return False, None
        try:
            value = value.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 falls before year 1 in UTC
            errors["expires_at"] = "must be within 100 years"
            return False, None
        if value <= now:
            errors["expires_at"] = "must be in the future"
            return False, None
        if value - now > MAX_EXPIRY:
            errors["expires_at"] = "must be within 100 years"
            return False, None
        return True, value
    if "expires_in" in body:
        raw = body["expires_in"]
        if raw is None:
            return True, None
        seconds = duration_seconds(raw)
        if seconds is None:
            errors["expires_in"] = 'must be a positive number of seconds or like "7d", "12h", "30m"'
            return False, None
        if seconds > MAX_EXPIRY.total_seconds():
            errors["expires_in"] = "must be within 100 years"
            return False, None
        return True, now + timedelta(seconds=seconds)
    return False, None


def integer(raw: Any) -> int | None:
    """A JSON integer. JSON has one number type (RFC 8259 §6), so ``5``, ``5.0``
    and ``5e0`` are the same integer, as JSON Schema counts any number with a
    zero fractional part; ``5.5``, booleans and strings are not."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    return None


def duration_seconds(raw: Any) -> int | None:
    seconds = integer(raw)
    if seconds is not None:
        return seconds if seconds > 0 else None
    if isinstance(raw, str):
        match = DURATION_RE.fullmatch(raw)
        if match:
            return int(match.group(1)) * _UNITS[match.group(2)]
    return None


def webhook_url(value: Any, errors: Errors) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 2048 or not URI_RE.fullmatch(value):
        errors["webhook_url"] = "must be an http(s) URL of at most 2048 characters, or null"
        return None
    try:
        url = URL(value)
    except (ValueError, TypeError):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        errors["webhook_url"] = "must be an http(s) URL of at most 2048 characters, or null"
        return None
    return value


def metadata(value: Any, errors: Errors) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        errors["metadata"] = "must be a JSON object"
        return None
    try:
        encoded = orjson.dumps(value)
        size = len(encoded)
    except orjson.JSONEncodeError:  # nested past orjson's depth limit, or not JSON
        errors["metadata"] = "must be JSON nested at most 254 levels deep"
        return None
    if b"\\u0000" in encoded:  # PostgreSQL's jsonb cannot hold a NUL character
        errors["metadata"] = "must not contain NUL characters"
        return None
    if size > MAX_METADATA_BYTES:
        errors["metadata"] = f"must serialise to at most {MAX_METADATA_BYTES} bytes"
        return None
    return value


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
