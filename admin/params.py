"""Query parameters: parsed here, range-checked by the services that own the rules."""

from __future__ import annotations

import re

from multidict import MultiMapping

from gateway.errors import Invalid

DEFAULT_LIMIT = 50
_DIGITS = re.compile(r"[0-9]{1,9}")  # ASCII only: int() would take "١٢", " 5" and "1_0"


def limit(query: MultiMapping[str], default: int = DEFAULT_LIMIT) -> int:
    raw = query.get("limit")
    if raw is None or raw == "":
        return default
    if not _DIGITS.fullmatch(raw):
        raise Invalid({"limit": "must be an integer"})
    return int(raw)


def text(query: MultiMapping[str], name: str) -> str | None:
    """A string parameter; an empty value counts as absent."""
    value = query.get(name)
    return value or None


def flag(query: MultiMapping[str], name: str) -> bool:
    raw = query.get(name)
    if raw is None or raw == "":
        return False
    lowered = raw.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise Invalid({name: "must be true or false"})
