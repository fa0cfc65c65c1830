"""The one migration runner: versioned steps, applied in order, each recorded.

A store's steps live beside it (``sqlite/migrations.py``,
``postgres/migrations.py``): ``(version, statements)`` pairs, the same
versions with the same meaning in both. Append a version; never edit one that
has been applied. ``schema_version`` holds one row per applied version; a
version at or below its highest is never run again. A store whose highest
version is above every step known here was written by a newer keygate: it is
refused (``StoreTooNew``) before anything reads or writes it, since this
keygate could not know what the newer steps changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from keygate.gateway.errors import StoreTooNew
from keygate.gateway.store.records import BUILTIN_GROUPS

if TYPE_CHECKING:
    from keygate.gateway.store.sqlbase import Conn

Step = tuple[int, Sequence[str]]


@dataclass(frozen=True, slots=True)
class Schema:
    """One store's migration steps and how it keeps ``schema_version``."""

    steps: Sequence[Step]
    version_table: str  # CREATE TABLE IF NOT EXISTS schema_version …
    record_version: str  # INSERT INTO schema_version …, with the version as $1

    @property
    def newest(self) -> int:
        """The newest version this keygate knows."""
        return max((version for version, _ in self.steps), default=0)


async def apply_pending(
    conn: Conn, schema: Schema, *, statement_timeout: float | None = None
) -> list[int]:
    """Run, inside the caller's transaction, every step newer than the store;
    return the versions applied. ``statement_timeout`` bounds each statement of
    a step where the store supports it (a step may rewrite a large table)."""
    await conn.execute(schema.version_table)
    current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
    if current > schema.newest:
        raise StoreTooNew(current, schema.newest)
    applied = []
    for version, statements in schema.steps:
        if version <= current:
            continue
        for statement in statements:
            await conn.execute(statement, timeout=statement_timeout)
        await conn.execute(schema.record_version, version)
        applied.append(version)
    return applied


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def builtin_group_rows(insert: str) -> list[str]:
    """The statements that seed the built-in groups: ``insert`` formatted with
    each group's ``name``, ``description`` and ``rules`` (JSON) as SQL string
    literals. They are module constants, never anyone's input."""
    return [
        insert.format(
            name=sql_literal(name),
            description=sql_literal(description),
            rules=sql_literal(orjson.dumps(rules).decode()),
        )
        for name, (description, rules) in BUILTIN_GROUPS.items()
    ]
