# ruff: noqa: S608 - SQL is assembled only from module constants and the store's
# dialect constants; every value is a bound parameter.
"""Key avatars in SQL, for both stores (docs/admin-api.md#avatars).

An avatar lives in ``key_avatars``, one row per key, beside the key rather
than in it: the PNG keygate encoded and its etag. Setting or removing one is a
change of the key (``updated_at``, its audit record, a change notice); the key
record reads the etag back as ``avatar_url`` (``rows.KEY_READ``).
"""

from __future__ import annotations

from keygate.gateway.errors import NotFound
from keygate.gateway.store import rows
from keygate.gateway.store.errors import KeyRevoked
from keygate.gateway.store.records import AuditEntry, AvatarRecord, KeyRecord, utcnow
from keygate.gateway.store.sqlbase import Conn, SqlBase


class AvatarSql(SqlBase):
    async def put_avatar(
        self, key_id: str, png: bytes, etag: str, *, audit: AuditEntry
    ) -> KeyRecord:
        async def tx(conn: Conn) -> KeyRecord:
            status = await conn.fetchval(
                f"SELECT status FROM keys WHERE id = $1{self.FOR_UPDATE}", key_id
            )
            if status is None:
                raise NotFound("No such key.")
            if status == "revoked":
                raise KeyRevoked
            # Replaced whole: the key row's lock already serialises writers.
            await conn.execute("DELETE FROM key_avatars WHERE key_id = $1", key_id)
            await conn.execute(
                "INSERT INTO key_avatars (key_id, png, etag, updated_at) VALUES ($1, $2, $3, $4)",
                key_id,
                png,
                etag,
                self.codec.put_time(utcnow()),
            )
            row = await self._update(conn, "keys", "id = $1", (key_id,), {})
            await self._finish(conn, audit, [("key", key_id)])
            return rows.key_from_row(row, self.codec)

        return await self._tx(tx)

    async def get_avatar(self, key_id: str) -> AvatarRecord | None:
        row = await self._fetchrow(
            "SELECT key_id, png, etag, updated_at FROM key_avatars WHERE key_id = $1", key_id
        )
        if row is None:
            return None
        return AvatarRecord(row[0], bytes(row[1]), row[2], self.codec.time(row[3]))  # type: ignore[arg-type]

    async def delete_avatar(self, key_id: str, *, audit: AuditEntry) -> bool:
        async def tx(conn: Conn) -> bool:
            exists = await conn.fetchval(
                f"SELECT id FROM keys WHERE id = $1{self.FOR_UPDATE}", key_id
            )
            if exists is None:
                raise NotFound("No such key.")
            gone = await conn.fetchval(
                "DELETE FROM key_avatars WHERE key_id = $1 RETURNING key_id", key_id
            )
            if gone is None:
                return False  # nothing to remove: no change, no audit record
            await self._update(conn, "keys", "id = $1", (key_id,), {})
            await self._finish(conn, audit, [("key", key_id)])
            return True

        return await self._tx(tx)
