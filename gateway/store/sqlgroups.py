# ruff: noqa: S608 - SQL is assembled only from module constants, the store's
# dialect constants and allow-listed column names; every value is a bound parameter.
"""Groups in SQL, for both stores. Built-in groups are never changed here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keygate.gateway.errors import NotFound
from keygate.gateway.store import rows
from keygate.gateway.store.base import GROUP_WRITABLE
from keygate.gateway.store.clauses import writable
from keygate.gateway.store.errors import GroupInUse
from keygate.gateway.store.records import AuditEntry, GroupRecord
from keygate.gateway.store.rows import GROUP_COLUMNS, placeholders
from keygate.gateway.store.sqlbase import Conn, Notices, SqlBase


class GroupSql(SqlBase):
    async def create_group(self, group: GroupRecord, *, audit: AuditEntry) -> GroupRecord:
        async def tx(conn: Conn) -> GroupRecord:
            with self._duplicates("group_name"):
                await conn.execute(
                    f"INSERT INTO groups ({GROUP_COLUMNS}) VALUES ({placeholders(6)})",
                    *rows.group_values(group, self.codec),
                )
            await self._finish(conn, audit, [("group", group.name)])
            return group

        return await self._tx(tx)

    async def get_group(self, name: str) -> GroupRecord | None:
        row = await self._fetchrow(f"SELECT {GROUP_COLUMNS} FROM groups WHERE name = $1", name)
        return rows.group_from_row(row, self.codec) if row else None

    async def list_groups(self) -> list[GroupRecord]:
        found = await self._fetch(
            f"SELECT {GROUP_COLUMNS} FROM groups ORDER BY name{self.BYTEWISE}"
        )
        return [rows.group_from_row(r, self.codec) for r in found]

    async def update_group(
        self, name: str, fields: Mapping[str, Any], *, audit: AuditEntry
    ) -> GroupRecord:
        writable(fields, GROUP_WRITABLE)

        async def tx(conn: Conn) -> GroupRecord:
            row = await self._update(conn, "groups", "name = $1 AND NOT builtin", (name,), fields)
            if row is None:
                raise NotFound("No such group.")
            await self._finish(conn, audit, [("group", name)])
            return rows.group_from_row(row, self.codec)

        return await self._tx(tx)

    async def delete_group(self, name: str, *, force: bool, audit: AuditEntry) -> None:
        held = self.HOLDS_GROUP.format("$1")

        async def tx(conn: Conn) -> None:
            found = await conn.fetchval(
                f"SELECT true FROM groups WHERE name = $1{self.FOR_UPDATE}", name
            )
            if found is None:
                raise NotFound("No such group.")
            if not force:
                in_use = await conn.fetchval(
                    f"SELECT EXISTS (SELECT 1 FROM users WHERE {held}) "
                    f"OR EXISTS (SELECT 1 FROM keys WHERE {held})",
                    name,
                )
                if in_use:
                    raise GroupInUse
            changes: Notices = []
            for table, kind in (("users", "user"), ("keys", "key")):
                # Removed in SQL, as the row is written: a concurrent change to a
                # holder's other groups is kept, not overwritten by a stale copy.
                found_rows = await conn.fetch(
                    f"UPDATE {table} SET groups = {self.WITHOUT_GROUP.format('$1')}, "
                    f"updated_at = $2 WHERE {held} RETURNING id",
                    name,
                    self._now(),
                )
                changes += [(kind, r[0]) for r in found_rows]
            await conn.execute("DELETE FROM groups WHERE name = $1", name)
            await self._finish(conn, audit, [*changes, ("group", name)])

        await self._tx(tx)
