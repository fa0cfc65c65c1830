# ruff: noqa: S608 - SQL is assembled only from module constants, the store's
# dialect constants and allow-listed column names; every value is a bound parameter.
"""Keys in SQL, for both stores: verification lookups and every key operation.

A refusal is raised as a ``StoreRefusal`` (``errors.py``): the key limit, a
revoked key, a name its owner already uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from keygate.gateway.errors import NotFound
from keygate.gateway.store import rows
from keygate.gateway.store.base import KEY_WRITABLE, KeyCheck
from keygate.gateway.store.clauses import Params, key_filter, writable
from keygate.gateway.store.errors import KeyLimitReached, KeyRevoked
from keygate.gateway.store.lookups import KeyLookups, ReadNow
from keygate.gateway.store.records import (
    AuditEntry,
    AuthRecord,
    ImportedPage,
    ImportOutcome,
    KeyAuth,
    KeyQuery,
    KeyRecord,
    Page,
    utcnow,
)
from keygate.gateway.store.rows import (
    AUDIT_INSERT_COLUMNS,
    AUTH_COLUMNS,
    AUTH_WIDTH,
    KEY_INSERT_COLUMNS,
    KEY_INSERT_WIDTH,
    KEY_READ,
    placeholders,
)
from keygate.gateway.store.sqlbase import Conn, SqlBase
from keygate.gateway.webhooks import events

# Imports queue behind each other (PostgreSQL: an advisory lock under this
# name; SQLite's write lock already serialises them), so a batch's check of
# which digests are held stays true until it commits. No user id has a colon.
IMPORT_LOCK = "keygate:imports"


def quota_sets(stored: str, window: str, count: str, bytewise: str) -> str:
    """The SET list adding ``count`` requests of ``window`` to a key's quota count
    (``Store.add_quota_used``): both expressions read the row as it was."""
    newer = (
        f"({stored} IS NULL OR length({stored}) != length({window}) "
        f"OR {stored}{bytewise} < {window}{bytewise})"
    )
    return (
        f"quota_used = CASE WHEN {stored} = {window} THEN quota_used + {count} "
        f"WHEN {newer} THEN {count} ELSE quota_used END, "
        f"quota_window = CASE WHEN {newer} THEN {window} ELSE {stored} END"
    )


class KeySql(SqlBase):
    async def _new_webhook_url(
        self, conn: Conn, key_id: str, url: str, secret: str | None
    ) -> None:
        """A URL set (again) is given another chance: a 410 had stopped it for
        every key (docs/webhooks.md#retries); and the key gets ``secret``
        unless it has one already."""
        await conn.execute("DELETE FROM webhook_gone WHERE url = $1", url)
        if secret is not None:
            await conn.execute(
                "UPDATE keys SET webhook_secret = $2 WHERE id = $1 AND webhook_secret IS NULL",
                key_id,
                secret,
            )

    # "k.id is one of the ids in parameter $1", and that parameter from a list.
    ID_LIST: ClassVar[str]
    # The batcher of verification lookups (lookups.py), made at the first miss.
    key_lookups: KeyLookups | None = None

    def _id_list(self, key_ids: list[str]) -> Any:
        return key_ids

    # --- verification -------------------------------------------------------
    async def auth_lookup(self, digest: bytes) -> AuthRecord | None:
        # The current digest, else a rolled-away one still in its grace period.
        row = await self._fetchrow(
            f"SELECT {AUTH_COLUMNS}, NULL AS until FROM keys k "
            "LEFT JOIN users u ON u.id = k.owner_id WHERE k.digest = $1 "
            f"UNION ALL SELECT {AUTH_COLUMNS}, r.until FROM retired_digests r "
            "JOIN keys k ON k.id = r.key_id LEFT JOIN users u ON u.id = k.owner_id "
            "WHERE r.digest = $1 ORDER BY until NULLS FIRST LIMIT 1",
            digest,
        )
        return rows.auth_from_row(row, row[AUTH_WIDTH], self.codec) if row is not None else None

    async def auth_lookup_key(self, key_id: str, digest: bytes) -> KeyAuth:
        # Batched with the other misses of this loop pass (lookups.py).
        lookups = self.key_lookups
        if lookups is None:
            lookups = self.key_lookups = KeyLookups(self._auth_rows, self._auth_rows_now())
        found = await lookups.rows(key_id)
        return rows.match_key_rows(found, digest, self.codec)

    def _auth_sql(self) -> str:
        """``auth_lookup_key``'s statement for a list of key ids (``ID_LIST``'s one
        parameter): one row per retired digest (at most one: a roll drops earlier
        ones), or one row with NULLs when the key has none; none for an id no
        key has."""
        return (
            f"SELECT {AUTH_COLUMNS}, r.until, k.digest, r.digest FROM keys k "
            "LEFT JOIN users u ON u.id = k.owner_id "
            f"LEFT JOIN retired_digests r ON r.key_id = k.id WHERE k.id {self.ID_LIST}"
        )

    async def _auth_rows(self, key_ids: list[str]) -> list[Any]:
        return await self._fetch(self._auth_sql(), self._id_list(key_ids))

    def _auth_rows_now(self) -> ReadNow | None:
        """A synchronous ``_auth_rows`` safe to run on the event loop, if the store has one."""
        return None

    async def key_ids(self) -> list[str]:
        found = await self._fetch(
            f"SELECT id FROM keys WHERE status != 'revoked' AND NOT ({self.IMPORTED})"
        )
        return [r[0] for r in found]

    # --- keys ---------------------------------------------------------------
    async def create_key(
        self,
        key: KeyRecord,
        digest: bytes,
        *,
        max_keys: int,
        audit: AuditEntry,
        webhook_secret: str | None = None,
    ) -> KeyRecord:
        async def tx(conn: Conn) -> KeyRecord:
            # Count and insert as one step for this owner, across processes and nodes.
            await self._lock_owner(conn, key.owner_id)
            count = await conn.fetchval(
                "SELECT count(*) FROM keys WHERE owner_id = $1 AND status != 'revoked'",
                key.owner_id,
            )
            if count >= max_keys:
                raise KeyLimitReached(max_keys)
            with self._duplicates():
                row = await conn.fetchrow(
                    f"INSERT INTO keys ({KEY_INSERT_COLUMNS}) "
                    f"VALUES ({placeholders(KEY_INSERT_WIDTH)}) RETURNING {KEY_READ}",
                    *rows.key_values(key, digest, self.codec),
                )
            if key.webhook_url is not None:
                # Setting a URL, on create as on a change, clears a 410 marker.
                await self._new_webhook_url(conn, key.id, key.webhook_url, webhook_secret)
            created = rows.key_from_row(row, self.codec)
            await self._key_event(conn, events.CREATED, created, audit)
            await self._finish(conn, audit, [("key-created", key.id)])
            return created

        return await self._tx(tx)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        row = await self._fetchrow(f"SELECT {KEY_READ} FROM keys WHERE id = $1", key_id)
        return rows.key_from_row(row, self.codec) if row else None

    async def list_keys(self, query: KeyQuery) -> Page[KeyRecord]:
        bind = Params()
        where = key_filter(
            query, bind, self._now(), lower=self.LOWER, holds_group=self.HOLDS_GROUP
        )
        found = await self._fetch(
            f"SELECT {KEY_READ} FROM keys{where} ORDER BY seq DESC "
            f"LIMIT {bind(query.limit + 1)}",
            *bind.values,
        )
        items = [rows.key_from_row(r, self.codec) for r in found[: query.limit]]
        return Page(items, items[-1].seq if len(found) > query.limit else None)

    async def update_key(
        self,
        key_id: str,
        fields: Mapping[str, Any],
        *,
        audit: AuditEntry,
        check: KeyCheck | None = None,
        webhook_secret: str | None = None,
    ) -> KeyRecord:
        writable(fields, KEY_WRITABLE)

        async def tx(conn: Conn) -> KeyRecord:
            # Locked as read: "revoked is final" and ``check`` hold against a
            # concurrent change of the same key.
            row = await conn.fetchrow(
                f"SELECT {KEY_READ} FROM keys WHERE id = $1{self.FOR_UPDATE}", key_id
            )
            if row is None:
                raise NotFound("No such key.")
            current = rows.key_from_row(row, self.codec)
            if current.status == "revoked":
                raise KeyRevoked
            writes = dict(fields)
            if check is not None:
                writes.update(writable(check(current), KEY_WRITABLE))
            with self._duplicates():
                row = await self._update(conn, "keys", "id = $1", (key_id,), writes)
            if writes.get("status") == "revoked":
                await conn.execute("DELETE FROM retired_digests WHERE key_id = $1", key_id)
            updated = rows.key_from_row(row, self.codec)
            if updated.webhook_url is not None and "webhook_url" in writes:
                await self._new_webhook_url(conn, key_id, updated.webhook_url, webhook_secret)
            event = events.for_status(current.status, updated.status)
            if event is None and set(writes) != {"status"}:
                event = events.UPDATED
            await self._key_event(conn, event, updated, audit)
            await self._finish(conn, audit, [("key", key_id)])
            return updated

        return await self._tx(tx)

    async def roll_key(
        self,
        key_id: str,
        digest: bytes,
        last4: str,
        *,
        grace_until: datetime | None,
        audit: AuditEntry,
        prefix: str | None = None,
    ) -> KeyRecord:
        # A new prefix makes the key a keygate key (an imported key, rolled).
        native = "" if prefix is None else ", prefix = $5, imported = $6"
        extra = () if prefix is None else (prefix, self.codec.put_flag(False))

        async def tx(conn: Conn) -> KeyRecord:
            # After an import batch that checked this key's digest as held: else
            # the batch could write the token being rolled away as a new key.
            await self._lock_owner(conn, IMPORT_LOCK)
            row = await conn.fetchrow(
                f"SELECT digest, status FROM keys WHERE id = $1{self.FOR_UPDATE}", key_id
            )
            if row is None:
                raise NotFound("No such key.")
            if row[1] == "revoked":
                raise KeyRevoked
            now = utcnow()
            # The token rolled away never comes back through an import, whatever
            # becomes of the key (docs/reference.md#imported-keys). Every roll is
            # recorded: a key once imported is a keygate key after its first roll.
            await conn.execute(
                "INSERT INTO import_tombstones (digest, key_id, retired_at) "
                "VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING",
                row[0],
                key_id,
                self.codec.put_time(now),
            )
            # Earlier grace tokens end now: only the token being replaced gets a grace.
            await conn.execute("DELETE FROM retired_digests WHERE key_id = $1", key_id)
            if grace_until is not None and grace_until > now:
                await conn.execute(
                    "INSERT INTO retired_digests (digest, key_id, until) VALUES ($1, $2, $3)",
                    row[0],
                    key_id,
                    self.codec.put_time(grace_until),
                )
            with self._duplicates():
                rolled = await conn.fetchrow(
                    f"UPDATE keys SET digest = $1, last4 = $2, updated_at = $3{native} "
                    f"WHERE id = $4 RETURNING {KEY_READ}",
                    digest,
                    last4,
                    self.codec.put_time(now),
                    key_id,
                    *extra,
                )
            key = rows.key_from_row(rolled, self.codec)
            await self._key_event(conn, events.ROLLED, key, audit)
            notices = [("key", key_id)]
            if prefix is not None:
                # Its id now names keygate tokens: every process's key id set learns it.
                notices.append(("key-created", key_id))
            await self._finish(conn, audit, notices)
            return key

        return await self._tx(tx)

    async def delete_key(self, key_id: str, *, audit: AuditEntry) -> None:
        async def tx(conn: Conn) -> None:
            row = await conn.fetchrow(
                f"SELECT {KEY_READ}, webhook_secret, webhook_secret_prev, "
                f"webhook_secret_prev_until FROM keys WHERE id = $1{self.FOR_UPDATE}",
                key_id,
            )
            if row is None:
                raise NotFound("No such key.")
            n = len(row)
            # The key's row goes: its event keeps what signs it (docs/webhooks.md).
            signing = [row[n - 3]] if row[n - 3] else []
            until = self.codec.time(row[n - 1])
            if row[n - 2] and until is not None and until > utcnow():
                signing.append(row[n - 2])
            gone = rows.key_from_row(tuple(row)[: n - 3], self.codec)
            await self._key_event(conn, events.DELETED, gone, audit, secrets=signing)
            await conn.execute("DELETE FROM keys WHERE id = $1", key_id)
            # The foreign key cascades too; said here so no store setting decides it.
            await conn.execute("DELETE FROM key_avatars WHERE key_id = $1", key_id)
            await conn.execute("DELETE FROM retired_digests WHERE key_id = $1", key_id)
            await self._finish(conn, audit, [("key", key_id)])

        await self._tx(tx)

    # --- imported keys (docs/reference.md#imported-keys) -----------------------
    async def held_digests(self, digests: Sequence[bytes]) -> set[bytes]:
        if not digests:
            return set()
        return await self._held(None, digests)

    async def _held(self, conn: Conn | None, digests: Sequence[bytes]) -> set[bytes]:
        # A rolled-away digest is held too, in its grace period or long after:
        # an import never brings a rolled-away token back.
        among, args = self._among("digest", digests)
        sql = (
            f"SELECT digest FROM keys WHERE {among} "
            f"UNION ALL SELECT digest FROM retired_digests WHERE {among} "
            f"UNION ALL SELECT digest FROM import_tombstones WHERE {among}"
        )
        found = await (conn.fetch(sql, *args) if conn is not None else self._fetch(sql, *args))
        return {bytes(r[0]) for r in found}

    async def import_keys(
        self,
        keys: Sequence[tuple[KeyRecord, bytes]],
        *,
        audit: Callable[[KeyRecord], AuditEntry],
    ) -> ImportOutcome:
        if not keys:
            return ImportOutcome([], 0)

        async def tx(conn: Conn) -> ImportOutcome:
            await self._lock_owner(conn, IMPORT_LOCK)
            held = await self._held(conn, [d for _, d in keys])
            fresh = [(k, d) for k, d in keys if d not in held]
            if not fresh:
                return ImportOutcome([], len(keys))
            with self._duplicates():
                await conn.executemany(
                    f"INSERT INTO keys ({KEY_INSERT_COLUMNS}) "
                    f"VALUES ({placeholders(KEY_INSERT_WIDTH)})",
                    [rows.key_values(k, d, self.codec) for k, d in fresh],
                )
            at = utcnow()
            await conn.executemany(
                f"INSERT INTO audit ({AUDIT_INSERT_COLUMNS}) VALUES ({placeholders(9)})",
                [rows.audit_values(audit(k), at, self.codec) for k, _ in fresh],
            )
            ids = [k.id for k, _ in fresh]
            among, args = self._among("id", ids)
            first, last = await conn.fetchrow(
                f"SELECT min(seq), max(seq) FROM keys WHERE {among}", *args
            )
            # One notice for the batch: every process reads the span's digests.
            span = f"{first}:{last}"
            await self._finish(conn, None, [("keys-imported", span)])
            return ImportOutcome(ids, len(keys) - len(fresh), span)

        return await self._tx(tx)

    async def imported_keys(
        self, after_seq: int, upto_seq: int | None = None, limit: int = 50_000
    ) -> ImportedPage:
        bind = Params(after_seq)
        where = f"{self.IMPORTED} AND seq > $1"
        if upto_seq is not None:
            where += f" AND seq <= {bind(upto_seq)}"
        found = await self._fetch(
            f"SELECT seq, digest FROM keys WHERE {where} ORDER BY seq LIMIT {bind(limit)}",
            *bind.values,
        )
        return ImportedPage([bytes(r[1]) for r in found], found[-1][0] if found else 0)

    async def key_names(self, owner_id: str) -> set[str]:
        found = await self._fetch("SELECT name_key FROM keys WHERE owner_id = $1", owner_id)
        return {r[0] for r in found}

    async def count_keys(self, owner_id: str) -> int:
        return int(
            await self._fetchval(
                "SELECT count(*) FROM keys WHERE owner_id = $1 AND status != 'revoked'", owner_id
            )
        )
