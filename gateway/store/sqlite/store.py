# ruff: noqa: S608 - SQL is built only from module constants and allow-listed column
# names; every value is a bound parameter.
"""SQLite store on aiosqlite: WAL, one writer connection, one reader connection.

Durability: ``synchronous=FULL`` on every connection (the pragma is per
connection), so a write acknowledged to a client survives kill -9 and power
loss. ``BEGIN IMMEDIATE`` takes the write lock up front, so the key-limit count
and the insert that follows it are one serialised step even across processes
(the CLI and every worker share the file).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson
from keygate.gateway.errors import NotFound, StoreUnavailable
from keygate.gateway.store.base import GROUP_WRITABLE, KEY_WRITABLE, USER_WRITABLE, KeyCheck, Store
from keygate.gateway.store.errors import GroupInUse, KeyLimitReached, KeyRevoked, UniqueViolation
from keygate.gateway.store.records import (
    AuditEntry,
    AuditRecord,
    AuthRecord,
    Change,
    GroupRecord,
    KeyAuth,
    KeyQuery,
    KeyRecord,
    Page,
    UserRecord,
)
from keygate.gateway.store.sqlite.migrations import SQLITE_MIGRATIONS

T = TypeVar("T")
Tx = Callable[[aiosqlite.Connection], Awaitable[T]]

KEY_COLUMNS = (
    "seq, id, prefix, last4, name, description, status, groups, owner_id, owner_username, "
    "created_by_id, created_by_username, created_at, updated_at, last_used_at, expires_at, "
    "webhook_url, metadata, disabled_by_id, disabled_by_username, disabled_by_admin, "
    "expires_by_admin"
)
AUTH_COLUMNS = (
    "k.id, k.name, k.status, k.groups, k.expires_at, k.owner_id, "
    "u.username, u.role, u.status, u.groups"
)
# Changes older than this are pruned at start; a worker that slept longer
# than this has long outlived cache_ttl anyway.
CHANGE_RETENTION = 86400.0


def ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def key_from_row(row: Any) -> KeyRecord:
    return KeyRecord(
        seq=row[0],
        id=row[1],
        prefix=row[2],
        last4=row[3],
        name=row[4],
        description=row[5],
        status=row[6],
        groups=tuple(orjson.loads(row[7])),
        owner_id=row[8],
        owner_username=row[9],
        created_by_id=row[10],
        created_by_username=row[11],
        created_at=dt(row[12]),  # type: ignore[arg-type]
        updated_at=dt(row[13]),  # type: ignore[arg-type]
        last_used_at=dt(row[14]),
        expires_at=dt(row[15]),
        webhook_url=row[16],
        metadata=orjson.loads(row[17]),
        disabled_by_id=row[18],
        disabled_by_username=row[19],
        disabled_by_admin=bool(row[20]),
        expires_by_admin=bool(row[21]),
    )


def user_from_row(row: Any) -> UserRecord:
    return UserRecord(
        id=row[0],
        username=row[1],
        role=row[2],
        groups=tuple(orjson.loads(row[3])),
        status=row[4],
        created_at=dt(row[5]),  # type: ignore[arg-type]
        updated_at=dt(row[6]),  # type: ignore[arg-type]
    )


def group_from_row(row: Any) -> GroupRecord:
    return GroupRecord(
        name=row[0],
        description=row[1],
        rules=tuple(orjson.loads(row[2])),
        builtin=bool(row[3]),
        created_at=dt(row[4]),  # type: ignore[arg-type]
        updated_at=dt(row[5]),  # type: ignore[arg-type]
    )


def auth_from_row(row: Any, grace_until: float | None = None) -> AuthRecord:
    return AuthRecord(
        key_id=row[0],
        key_name=row[1],
        key_status=row[2],
        key_groups=tuple(orjson.loads(row[3])),
        expires_at=row[4],
        owner_id=row[5],
        owner_username=row[6],
        owner_role=row[7],
        owner_status=row[8],
        owner_groups=tuple(orjson.loads(row[9])) if row[9] is not None else (),
        grace_until=grace_until,
    )


def match_key_rows(
    rows: list[Any], digest: bytes, make: Callable[[Any, Any], AuthRecord]
) -> KeyAuth:
    """``auth_lookup_key``'s answer from rows of (AUTH columns, until, current
    digest, retired digest); ``make(row, until)`` builds the record.

    The current digest wins over a retired one, as in ``auth_lookup``.
    """
    if not rows:
        return KeyAuth(None, frozenset())
    current = bytes(rows[0][11])
    retired = [(bytes(row[12]), row) for row in rows if row[12] is not None]
    record = None
    if digest == current:
        record = make(rows[0], None)
    else:
        for old, row in retired:
            if digest == old:
                record = make(row, row[10])
                break
    return KeyAuth(record, frozenset([current, *(old for old, _ in retired)]))


def _lower(value: str | None) -> str | None:
    return value.lower() if isinstance(value, str) else value


def like_pattern(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


USER_COLUMNS = "id, username, role, groups, status, created_at, updated_at"
GROUP_COLUMNS = "name, description, rules, builtin, created_at, updated_at"
AUDIT_COLUMNS = (
    "id, at, action, target_type, target_id, actor_user_id, actor_username, "
    "actor_key_id, client_addr, changes"
)


class SQLiteStore(Store):
    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    # --- lifecycle ------------------------------------------------------
    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        await db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA foreign_keys = ON")
        # SQLite's lower() folds ASCII only; search must fold as PostgreSQL does.
        await db.create_function("kg_lower", 1, _lower, deterministic=True)
        return db

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = await self._connect()
            self.applied_on_open = tuple(await self.migrate())
            self._reader = await self._connect()
            await self._writer.execute(
                "DELETE FROM changes WHERE at < ?", (time.time() - CHANGE_RETENTION,)
            )
        except (OSError, sqlite3.Error) as exc:
            await self.close()
            raise StoreUnavailable(f"Cannot open the SQLite store at {self.path}: {exc}.") from exc

    async def close(self) -> None:
        # A transaction still running for a cancelled caller ends first.
        async with self._write_lock:
            for db in (self._reader, self._writer):
                if db is not None:
                    await db.close()
            self._reader = self._writer = None

    async def migrate(self) -> list[int]:
        async def tx(db: aiosqlite.Connection) -> list[int]:
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            cur = await db.execute("SELECT coalesce(max(version), 0) FROM schema_version")
            (current,) = await cur.fetchone()  # type: ignore[misc]
            applied = []
            for version, statements in SQLITE_MIGRATIONS:
                if version <= current:
                    continue
                for stmt in statements:
                    await db.execute(stmt)
                await db.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )
                applied.append(version)
            return applied

        return await self._tx(tx)

    async def ping(self) -> None:
        try:
            await self._read_one("SELECT 1", ())
        except (sqlite3.Error, ValueError, AttributeError) as exc:
            raise StoreUnavailable from exc

    # --- helpers ----------------------------------------------------------
    @property
    def _r(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreUnavailable
        return self._reader

    async def _tx(self, fn: Tx[T]) -> T:
        db = self._writer
        if db is None:
            raise StoreUnavailable
        # aiosqlite runs each statement on its own thread: cancelling the task
        # that awaits one does not stop it. A cancelled BEGIN would leave the
        # writer inside a transaction (holding the file's write lock for every
        # process), a cancelled COMMIT would make the ROLLBACK fail and swallow
        # the cancellation. So the transaction always runs to its end, commit
        # or rollback; a cancelled caller only stops waiting for it.
        return await asyncio.shield(self._run_tx(db, fn))

    async def _run_tx(self, db: aiosqlite.Connection, fn: Tx[T]) -> T:
        async with self._write_lock:
            try:
                await db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreUnavailable from exc
            try:
                result = await fn(db)
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
            return result

    async def _read_one(self, sql: str, args: tuple[Any, ...]) -> Any:
        try:
            cur = await self._r.execute(sql, args)
            return await cur.fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable from exc

    async def _read_all(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        try:
            cur = await self._r.execute(sql, args)
            return list(await cur.fetchall())
        except sqlite3.Error as exc:
            raise StoreUnavailable from exc

    @staticmethod
    async def _audit(db: aiosqlite.Connection, entry: AuditEntry) -> None:
        await db.execute(
            "INSERT INTO audit (at, action, target_type, target_id, actor_user_id, "
            "actor_username, actor_key_id, client_addr, changes) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                time.time(),
                entry.action,
                entry.target_type,
                entry.target_id,
                entry.actor_user_id,
                entry.actor_username,
                entry.actor_key_id,
                entry.client_addr,
                orjson.dumps(entry.changes, default=str).decode(),
            ),
        )

    @staticmethod
    async def _change(db: aiosqlite.Connection, kind: str, ref: str) -> None:
        await db.execute(
            "INSERT INTO changes (kind, ref, at) VALUES (?, ?, ?)", (kind, ref, time.time())
        )

    @staticmethod
    async def _key_in_tx(db: aiosqlite.Connection, key_id: str) -> KeyRecord | None:
        cur = await db.execute(f"SELECT {KEY_COLUMNS} FROM keys WHERE id = ?", (key_id,))
        row = await cur.fetchone()
        return key_from_row(row) if row else None

    # --- verification -------------------------------------------------------
    async def auth_lookup(self, digest: bytes) -> AuthRecord | None:
        row = await self._read_one(
            f"SELECT {AUTH_COLUMNS} FROM keys k LEFT JOIN users u ON u.id = k.owner_id "
            "WHERE k.digest = ?",
            (digest,),
        )
        if row is not None:
            return auth_from_row(row)
        row = await self._read_one(
            f"SELECT {AUTH_COLUMNS}, r.until FROM retired_digests r "
            "JOIN keys k ON k.id = r.key_id LEFT JOIN users u ON u.id = k.owner_id "
            "WHERE r.digest = ?",
            (digest,),
        )
        return auth_from_row(row, grace_until=row[10]) if row is not None else None

    async def auth_lookup_key(self, key_id: str, digest: bytes) -> KeyAuth:
        # One row per retired digest (at most one: a roll drops earlier ones), or
        # one row with NULLs when the key has none; no row when no key has the id.
        rows = await self._read_all(
            f"SELECT {AUTH_COLUMNS}, r.until, k.digest, r.digest FROM keys k "
            "LEFT JOIN users u ON u.id = k.owner_id "
            "LEFT JOIN retired_digests r ON r.key_id = k.id WHERE k.id = ?",
            (key_id,),
        )
        return match_key_rows(rows, digest, auth_from_row)

    async def key_ids(self) -> list[str]:
        rows = await self._read_all("SELECT id FROM keys WHERE status != 'revoked'", ())
        return [r[0] for r in rows]

    # --- keys -------------------------------------------------------------------
    async def create_key(
        self, key: KeyRecord, digest: bytes, *, max_keys: int, audit: AuditEntry
    ) -> KeyRecord:
        async def tx(db: aiosqlite.Connection) -> KeyRecord:
            cur = await db.execute(
                "SELECT count(*) FROM keys WHERE owner_id = ? AND status != 'revoked'",
                (key.owner_id,),
            )
            (count,) = await cur.fetchone()  # type: ignore[misc]
            if count >= max_keys:
                raise KeyLimitReached(max_keys)
            try:
                await db.execute(
                    "INSERT INTO keys (id, digest, prefix, last4, name, name_key, description, "
                    "status, groups, owner_id, owner_username, created_by_id, "
                    "created_by_username, created_at, updated_at, last_used_at, expires_at, "
                    "webhook_url, metadata, disabled_by_id, disabled_by_username, "
                    "disabled_by_admin, expires_by_admin) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        key.id,
                        digest,
                        key.prefix,
                        key.last4,
                        key.name,
                        key.name.casefold(),
                        key.description,
                        key.status,
                        _json(list(key.groups)),
                        key.owner_id,
                        key.owner_username,
                        key.created_by_id,
                        key.created_by_username,
                        ts(key.created_at),
                        ts(key.updated_at),
                        None,
                        ts(key.expires_at),
                        key.webhook_url,
                        _json(key.metadata),
                        key.disabled_by_id,
                        key.disabled_by_username,
                        int(key.disabled_by_admin),
                        int(key.expires_by_admin),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise _conflict(exc) from None
            await self._audit(db, audit)
            await self._change(db, "key-created", key.id)
            created = await self._key_in_tx(db, key.id)
            assert created is not None
            return created

        return await self._tx(tx)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        row = await self._read_one(f"SELECT {KEY_COLUMNS} FROM keys WHERE id = ?", (key_id,))
        return key_from_row(row) if row else None

    async def list_keys(self, query: KeyQuery) -> Page[KeyRecord]:
        where: list[str] = []
        args: list[Any] = []
        now = time.time()
        if query.before_seq is not None:
            where.append("seq < ?")
            args.append(query.before_seq)
        if query.owner_id is not None:
            where.append("owner_id = ?")
            args.append(query.owner_id)
        if query.search:
            where.append(
                "(kg_lower(name) LIKE ? ESCAPE '\\' OR kg_lower(description) LIKE ? ESCAPE '\\' "
                "OR id LIKE ? ESCAPE '\\')"
            )
            pattern = like_pattern(query.search)
            args += [pattern, pattern, pattern]
        if query.group is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(keys.groups) WHERE value = ?)")
            args.append(query.group)
        if query.status == "expired":
            where.append("status = 'active' AND expires_at IS NOT NULL AND expires_at <= ?")
            args.append(now)
        elif query.status == "active":
            where.append("status = 'active' AND (expires_at IS NULL OR expires_at > ?)")
            args.append(now)
        elif query.status is not None:
            where.append("status = ?")
            args.append(query.status)
        sql = f"SELECT {KEY_COLUMNS} FROM keys"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(query.limit + 1)
        rows = await self._read_all(sql, tuple(args))
        items = [key_from_row(r) for r in rows[: query.limit]]
        next_cursor = items[-1].seq if len(rows) > query.limit else None
        return Page(items, next_cursor)

    async def update_key(
        self,
        key_id: str,
        fields: Mapping[str, Any],
        *,
        audit: AuditEntry,
        check: KeyCheck | None = None,
    ) -> KeyRecord:
        _writable(fields)

        async def tx(db: aiosqlite.Connection) -> KeyRecord:
            current = await self._key_in_tx(db, key_id)
            if current is None:
                raise NotFound("No such key.")
            if current.status == "revoked":
                raise KeyRevoked
            writes = dict(fields)
            if check is not None:
                writes.update(_writable(check(current)))
            sets, args = _key_sets(writes)
            try:
                await db.execute(
                    f"UPDATE keys SET {sets}, updated_at = ? WHERE id = ?",
                    (*args, time.time(), key_id),
                )
            except sqlite3.IntegrityError as exc:
                raise _conflict(exc) from None
            if writes.get("status") == "revoked":
                await db.execute("DELETE FROM retired_digests WHERE key_id = ?", (key_id,))
            await self._audit(db, audit)
            await self._change(db, "key", key_id)
            updated = await self._key_in_tx(db, key_id)
            assert updated is not None
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
    ) -> KeyRecord:
        async def tx(db: aiosqlite.Connection) -> KeyRecord:
            cur = await db.execute("SELECT digest, status FROM keys WHERE id = ?", (key_id,))
            row = await cur.fetchone()
            if row is None:
                raise NotFound("No such key.")
            if row[1] == "revoked":
                raise KeyRevoked
            now = time.time()
            # Earlier grace tokens end now: only the token being replaced gets a grace.
            await db.execute("DELETE FROM retired_digests WHERE key_id = ?", (key_id,))
            if grace_until is not None and grace_until.timestamp() > now:
                await db.execute(
                    "INSERT INTO retired_digests (digest, key_id, until) VALUES (?, ?, ?)",
                    (row[0], key_id, grace_until.timestamp()),
                )
            await db.execute(
                "UPDATE keys SET digest = ?, last4 = ?, updated_at = ? WHERE id = ?",
                (digest, last4, now, key_id),
            )
            await self._audit(db, audit)
            await self._change(db, "key", key_id)
            rolled = await self._key_in_tx(db, key_id)
            assert rolled is not None
            return rolled

        return await self._tx(tx)

    async def delete_key(self, key_id: str, *, audit: AuditEntry) -> None:
        async def tx(db: aiosqlite.Connection) -> None:
            cur = await db.execute("DELETE FROM keys WHERE id = ?", (key_id,))
            if cur.rowcount == 0:
                raise NotFound("No such key.")
            await db.execute("DELETE FROM retired_digests WHERE key_id = ?", (key_id,))
            await self._audit(db, audit)
            await self._change(db, "key", key_id)

        await self._tx(tx)

    # --- users --------------------------------------------------------------
    async def create_user(self, user: UserRecord, *, audit: AuditEntry | None) -> UserRecord:
        async def tx(db: aiosqlite.Connection) -> UserRecord:
            try:
                await db.execute(
                    f"INSERT INTO users ({USER_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                    (
                        user.id,
                        user.username,
                        user.role,
                        _json(list(user.groups)),
                        user.status,
                        ts(user.created_at),
                        ts(user.updated_at),
                    ),
                )
            except sqlite3.IntegrityError:
                raise UniqueViolation("username") from None
            if audit is not None:
                await self._audit(db, audit)
            await self._change(db, "user", user.id)
            return user

        return await self._tx(tx)

    async def get_user(self, username: str) -> UserRecord | None:
        row = await self._read_one(
            f"SELECT {USER_COLUMNS} FROM users WHERE username = ?", (username,)
        )
        return user_from_row(row) if row else None

    async def get_user_by_id(self, user_id: str) -> UserRecord | None:
        row = await self._read_one(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (user_id,))
        return user_from_row(row) if row else None

    async def list_users(self, limit: int, after: str | None) -> Page[UserRecord]:
        rows = await self._read_all(
            f"SELECT {USER_COLUMNS} FROM users WHERE username > ? ORDER BY username LIMIT ?",
            (after or "", limit + 1),
        )
        items = [user_from_row(r) for r in rows[:limit]]
        return Page(items, None if len(rows) <= limit else items[-1].username)  # type: ignore[arg-type]

    async def update_user(
        self, username: str, fields: Mapping[str, Any], *, audit: AuditEntry
    ) -> UserRecord:
        unknown = set(fields) - USER_WRITABLE
        if unknown:
            raise ValueError(f"not writable: {sorted(unknown)}")

        async def tx(db: aiosqlite.Connection) -> UserRecord:
            sets = []
            args: list[Any] = []
            for name, value in fields.items():
                sets.append(f"{name} = ?")
                args.append(_json(list(value)) if name == "groups" else value)
            cur = await db.execute(
                f"UPDATE users SET {', '.join(sets)}, updated_at = ? "
                "WHERE username = ? RETURNING id",
                (*args, time.time(), username),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound("No such user.")
            await self._audit(db, audit)
            await self._change(db, "user", row[0])
            cur = await db.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (row[0],))
            return user_from_row(await cur.fetchone())

        return await self._tx(tx)

    async def delete_user(self, username: str, *, audit: AuditEntry) -> list[str]:
        async def tx(db: aiosqlite.Connection) -> list[str]:
            cur = await db.execute("SELECT id FROM users WHERE username = ?", (username,))
            row = await cur.fetchone()
            if row is None:
                raise NotFound("No such user.")
            user_id = row[0]
            cur = await db.execute(
                "UPDATE keys SET status = 'revoked', updated_at = ? "
                "WHERE owner_id = ? AND status != 'revoked' RETURNING id",
                (time.time(), user_id),
            )
            revoked = [r[0] for r in await cur.fetchall()]
            await db.execute(
                "DELETE FROM retired_digests WHERE key_id IN "
                "(SELECT id FROM keys WHERE owner_id = ?)",
                (user_id,),
            )
            await db.execute("DELETE FROM users WHERE id = ?", (user_id,))
            await self._audit(db, audit)
            await self._change(db, "user", user_id)
            for key_id in revoked:
                await self._change(db, "key", key_id)
            return revoked

        return await self._tx(tx)

    async def count_admins(self) -> int:
        row = await self._read_one(
            "SELECT count(*) FROM users WHERE role = 'admin' AND status = 'active'", ()
        )
        return int(row[0])

    # --- groups -------------------------------------------------------------
    async def create_group(self, group: GroupRecord, *, audit: AuditEntry) -> GroupRecord:
        async def tx(db: aiosqlite.Connection) -> GroupRecord:
            try:
                await db.execute(
                    f"INSERT INTO groups ({GROUP_COLUMNS}) VALUES (?,?,?,?,?,?)",
                    (
                        group.name,
                        group.description,
                        _json(list(group.rules)),
                        int(group.builtin),
                        ts(group.created_at),
                        ts(group.updated_at),
                    ),
                )
            except sqlite3.IntegrityError:
                raise UniqueViolation("group_name") from None
            await self._audit(db, audit)
            await self._change(db, "group", group.name)
            return group

        return await self._tx(tx)

    async def get_group(self, name: str) -> GroupRecord | None:
        row = await self._read_one(f"SELECT {GROUP_COLUMNS} FROM groups WHERE name = ?", (name,))
        return group_from_row(row) if row else None

    async def list_groups(self) -> list[GroupRecord]:
        rows = await self._read_all(f"SELECT {GROUP_COLUMNS} FROM groups ORDER BY name", ())
        return [group_from_row(r) for r in rows]

    async def update_group(
        self, name: str, fields: Mapping[str, Any], *, audit: AuditEntry
    ) -> GroupRecord:
        unknown = set(fields) - GROUP_WRITABLE
        if unknown:
            raise ValueError(f"not writable: {sorted(unknown)}")

        async def tx(db: aiosqlite.Connection) -> GroupRecord:
            sets = []
            args: list[Any] = []
            for field_name, value in fields.items():
                sets.append(f"{field_name} = ?")
                args.append(_json(list(value)) if field_name == "rules" else value)
            cur = await db.execute(
                f"UPDATE groups SET {', '.join(sets)}, updated_at = ? "
                "WHERE name = ? AND builtin = 0",
                (*args, time.time(), name),
            )
            if cur.rowcount == 0:
                raise NotFound("No such group.")
            await self._audit(db, audit)
            await self._change(db, "group", name)
            cur = await db.execute(f"SELECT {GROUP_COLUMNS} FROM groups WHERE name = ?", (name,))
            return group_from_row(await cur.fetchone())

        return await self._tx(tx)

    async def delete_group(self, name: str, *, force: bool, audit: AuditEntry) -> None:
        async def tx(db: aiosqlite.Connection) -> None:
            cur = await db.execute("SELECT builtin FROM groups WHERE name = ?", (name,))
            row = await cur.fetchone()
            if row is None:
                raise NotFound("No such group.")
            holders = []
            for table in ("users", "keys"):
                cur = await db.execute(
                    f"SELECT id, groups FROM {table} WHERE EXISTS "
                    "(SELECT 1 FROM json_each(groups) WHERE value = ?)",
                    (name,),
                )
                holders += [(table, r[0], orjson.loads(r[1])) for r in await cur.fetchall()]
            if holders and not force:
                raise GroupInUse
            now = time.time()
            for table, ident, groups in holders:
                remaining = [g for g in groups if g != name]
                await db.execute(
                    f"UPDATE {table} SET groups = ?, updated_at = ? WHERE id = ?",
                    (_json(remaining), now, ident),
                )
                await self._change(db, "user" if table == "users" else "key", ident)
            await db.execute("DELETE FROM groups WHERE name = ?", (name,))
            await self._audit(db, audit)
            await self._change(db, "group", name)

        await self._tx(tx)

    # --- audit, usage, changes -------------------------------------------------
    async def list_audit(self, limit: int, before_id: int | None) -> Page[AuditRecord]:
        rows = await self._read_all(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE id < ? ORDER BY id DESC LIMIT ?",
            (before_id if before_id is not None else 2**62, limit + 1),
        )
        items = [
            AuditRecord(
                id=r[0],
                at=dt(r[1]),  # type: ignore[arg-type]
                action=r[2],
                target_type=r[3],
                target_id=r[4],
                actor_user_id=r[5],
                actor_username=r[6],
                actor_key_id=r[7],
                client_addr=r[8],
                changes=orjson.loads(r[9]),
            )
            for r in rows[:limit]
        ]
        return Page(items, items[-1].id if len(rows) > limit else None)

    async def touch_last_used(self, stamps: Mapping[str, float]) -> None:
        if not stamps:
            return

        async def tx(db: aiosqlite.Connection) -> None:
            await db.executemany(
                "UPDATE keys SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?",
                [(stamp, key_id) for key_id, stamp in stamps.items()],
            )

        try:
            await self._tx(tx)
        except sqlite3.Error as exc:
            raise StoreUnavailable from exc

    async def change_seq(self) -> int:
        row = await self._read_one("SELECT coalesce(max(seq), 0) FROM changes", ())
        return int(row[0])

    async def changes_since(self, seq: int) -> list[Change]:
        rows = await self._read_all(
            "SELECT seq, kind, ref FROM changes WHERE seq > ? ORDER BY seq", (seq,)
        )
        return [Change(r[0], r[1], r[2]) for r in rows]

    async def data_version(self) -> int:
        """Changes whenever another connection commits: a near-free poll."""
        row = await self._read_one("PRAGMA data_version", ())
        return int(row[0])


def _key_sets(fields: Mapping[str, Any]) -> tuple[str, list[Any]]:
    sets: list[str] = []
    args: list[Any] = []
    for name, value in fields.items():
        if name == "groups":
            value = _json(list(value))
        elif name == "metadata":
            value = _json(value)
        elif name == "expires_at":
            value = ts(value)
        elif name in ("disabled_by_admin", "expires_by_admin"):
            value = int(value)
        sets.append(f"{name} = ?")
        args.append(value)
        if name == "name":
            sets.append("name_key = ?")
            args.append(value.casefold())
    return ", ".join(sets), args


def _writable(fields: Mapping[str, Any]) -> Mapping[str, Any]:
    unknown = set(fields) - KEY_WRITABLE
    if unknown:
        raise ValueError(f"not writable: {sorted(unknown)}")
    return fields


def _conflict(exc: sqlite3.IntegrityError) -> UniqueViolation:
    return UniqueViolation("key_name" if "name_key" in str(exc) else "other")
