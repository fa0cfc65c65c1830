# ruff: noqa: S608 - SQL is assembled only from module constants, the store's
# dialect constants and allow-listed column names; every value is a bound parameter.
"""Users in SQL, for both stores. Deleting a user revokes their keys in the
same transaction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keygate.gateway.errors import NotFound
from keygate.gateway.store import rows
from keygate.gateway.store.base import USER_WRITABLE
from keygate.gateway.store.clauses import writable
from keygate.gateway.store.records import AuditEntry, Page, UserRecord
from keygate.gateway.store.rows import KEY_COLUMNS, USER_COLUMNS, placeholders
from keygate.gateway.store.sqlbase import Conn, SqlBase
from keygate.gateway.webhooks import events


class UserSql(SqlBase):
    async def create_user(self, user: UserRecord, *, audit: AuditEntry | None) -> UserRecord:
        async def tx(conn: Conn) -> UserRecord:
            with self._duplicates("username"):
                await conn.execute(
                    f"INSERT INTO users ({USER_COLUMNS}) VALUES ({placeholders(7)})",
                    *rows.user_values(user, self.codec),
                )
            await self._finish(conn, audit, [("user", user.id)])
            return user

        return await self._tx(tx)

    async def get_user(self, username: str) -> UserRecord | None:
        row = await self._fetchrow(
            f"SELECT {USER_COLUMNS} FROM users WHERE username = $1", username
        )
        return rows.user_from_row(row, self.codec) if row else None

    async def get_user_by_id(self, user_id: str) -> UserRecord | None:
        row = await self._fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)
        return rows.user_from_row(row, self.codec) if row else None

    async def list_users(self, limit: int, after: str | None) -> Page[UserRecord]:
        found = await self._fetch(
            f"SELECT {USER_COLUMNS} FROM users WHERE username{self.BYTEWISE} > $1 "
            f"ORDER BY username{self.BYTEWISE} LIMIT $2",
            after or "",
            limit + 1,
        )
        items = [rows.user_from_row(r, self.codec) for r in found[:limit]]
        return Page(items, None if len(found) <= limit else items[-1].username)  # type: ignore[arg-type]

    async def update_user(
        self, username: str, fields: Mapping[str, Any], *, audit: AuditEntry
    ) -> UserRecord:
        writable(fields, USER_WRITABLE)

        async def tx(conn: Conn) -> UserRecord:
            row = await self._update(conn, "users", "username = $1", (username,), fields)
            if row is None:
                raise NotFound("No such user.")
            await self._finish(conn, audit, [("user", row[0])])
            return rows.user_from_row(row, self.codec)

        return await self._tx(tx)

    async def delete_user(self, username: str, *, audit: AuditEntry) -> list[str]:
        async def tx(conn: Conn) -> list[str]:
            user_id = await conn.fetchval(
                f"SELECT id FROM users WHERE username = $1{self.FOR_UPDATE}", username
            )
            if user_id is None:
                raise NotFound("No such user.")
            # No key may be created for this owner between the revoke and the delete.
            await self._lock_owner(conn, user_id)
            found = await conn.fetch(
                "UPDATE keys SET status = 'revoked', updated_at = $1 "
                f"WHERE owner_id = $2 AND status != 'revoked' RETURNING {KEY_COLUMNS}, NULL",
                self._now(),
                user_id,
            )
            revoked = [r[1] for r in found]
            for r in found:
                await self._key_event(
                    conn, events.REVOKED, rows.key_from_row(r, self.codec), audit
                )
            await conn.execute(
                "DELETE FROM retired_digests WHERE key_id IN "
                "(SELECT id FROM keys WHERE owner_id = $1)",
                user_id,
            )
            await conn.execute("DELETE FROM users WHERE id = $1", user_id)
            await self._finish(
                conn, audit, [("user", user_id), *(("key", key_id) for key_id in revoked)]
            )
            return revoked

        return await self._tx(tx)

    async def count_admins(self) -> int:
        count = await self._fetchval(
            "SELECT count(*) FROM users WHERE role = 'admin' AND status = 'active'"
        )
        return int(count)
