"""Query parameters: parsed here, range-checked by the services that own the rules.

An empty value (``?status=``) is refused with 422 rather than read as absent:
a client that sends one has lost a value on the way, and guessing "no filter"
or "the default" would hand it more than it asked for. The one exception is
``search``, whose empty substring matches every key, exactly like no search.
"""

from __future__ import annotations

import re

from multidict import MultiMapping

from keygate.gateway.errors import Invalid

DEFAULT_LIMIT = 50
# ASCII only: int() would take "١٢", " 5" and "1_0". An integral decimal such as
# "50.0" is the integer it writes (docs/admin-api.md, "Numbers").
_INTEGER = re.compile(r"([0-9]{1,9})(?:\.0*)?")
EMPTY = "must not be empty: leave the parameter out instead"


def limit(query: MultiMapping[str], default: int = DEFAULT_LIMIT) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    if raw == "":
        raise Invalid({"limit": EMPTY})
    match = _INTEGER.fullmatch(raw)
    if match is None:
        raise Invalid({"limit": "must be an integer"})
    return int(match.group(1))


def text(query: MultiMapping[str], name: str) -> str | None:
    """A string parameter; absent is None, empty is 422."""
    value = query.get(name)
    if value == "":
        raise Invalid({name: EMPTY})
    return value


def search(query: MultiMapping[str], name: str = "search") -> str | None:
    """A substring filter: empty matches everything, as absent does."""
    return query.get(name) or None


def flag(query: MultiMapping[str], name: str) -> bool:
    """``true`` or ``false``, as the OpenAPI document's boolean says."""
    raw = query.get(name)
    if raw is None:
        return False
    if raw in ("true", "false"):
        return raw == "true"
    raise Invalid({name: "must be true or false"})
