"""SQL built at run time: bound parameters, SET lists and the key-list filter.

Column names come only from the allow-lists in ``base.py``; every value is a
bound parameter (``$1``, ``$2``, … in both stores: see ``sqlbase.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keygate.gateway.store.records import KeyQuery
from keygate.gateway.store.rows import Codec

FLAGS = frozenset({"disabled_by_admin", "expires_by_admin"})


class Params:
    """The values bound to one statement: each call binds one more and
    returns its placeholder."""

    def __init__(self, *values: Any) -> None:
        self.values: list[Any] = list(values)

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def writable(fields: Mapping[str, Any], allowed: frozenset[str]) -> Mapping[str, Any]:
    """``fields``, unless one is outside the allow-list."""
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"not writable: {sorted(unknown)}")
    return fields


def set_list(fields: Mapping[str, Any], bind: Params, codec: Codec) -> str:
    """``"a = $1, b = $2, "`` for allow-listed ``fields`` (a trailing comma:
    ``updated_at`` always follows). A key's ``name`` also writes ``name_key``."""
    sets = []
    for name, value in fields.items():
        if name in ("groups", "rules", "rate_limits", "allowed_ips"):
            value = codec.put_doc([dict(v) if isinstance(v, dict) else v for v in value])
        elif name == "quota":
            value = codec.put_doc(dict(value)) if value is not None else None
        elif name == "metadata":
            value = codec.put_doc(value)
        elif name == "expires_at":
            value = codec.put_time(value)
        elif name in FLAGS:
            value = codec.put_flag(value)
        sets.append(f"{name} = {bind(value)}, ")
        if name == "name":
            sets.append(f"name_key = {bind(value.casefold())}, ")
    return "".join(sets)


def like_pattern(text: str) -> str:
    """A LIKE pattern (``ESCAPE '\\'``) matching ``text`` anywhere, lower-cased."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def key_filter(query: KeyQuery, bind: Params, now: Any, *, lower: str, holds_group: str) -> str:
    """The WHERE clause (or "") of ``list_keys``. ``now`` is the current time as
    the store holds it (``expired`` is computed, never stored); ``lower`` folds
    case as PostgreSQL's lower() does; ``holds_group`` formats a placeholder into
    "the row's groups hold this group"."""
    where: list[str] = []
    if query.before_seq is not None:
        where.append(f"seq < {bind(query.before_seq)}")
    if query.owner_id is not None:
        where.append(f"owner_id = {bind(query.owner_id)}")
    if query.search:
        p = bind(like_pattern(query.search))
        where.append(
            f"({lower}(name) LIKE {p} ESCAPE '\\' OR {lower}(description) LIKE {p} ESCAPE '\\' "
            f"OR id LIKE {p} ESCAPE '\\')"
        )
    if query.group is not None:
        where.append(holds_group.format(bind(query.group)))
    if query.status == "expired":
        where.append(f"status = 'active' AND expires_at IS NOT NULL AND expires_at <= {bind(now)}")
    elif query.status == "active":
        where.append(f"status = 'active' AND (expires_at IS NULL OR expires_at > {bind(now)})")
    elif query.status is not None:
        where.append(f"status = {bind(query.status)}")
    return " WHERE " + " AND ".join(where) if where else ""
