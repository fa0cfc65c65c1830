"""PostgreSQL store on an asyncpg pool, for several keygate nodes sharing one database.

Behaves exactly like the SQLite store; what differs is how concurrency is made safe:

- the key limit is counted under a per-owner advisory lock, so concurrent
  creates on any node cannot exceed it;
- every write ends by appending its audit record and change notices under one
  global advisory lock held until commit, so change sequence numbers become
  visible in commit order: a reader that has seen seq N has seen every change
  below N. (Sequences still have gaps after rollbacks; nobody assumes they do not.)
- each write then runs ``pg_notify('keygate_changes', '<seq>')``, delivered on
  commit to every node's ``PgChangeListener`` (``listener()``).

Connection failures, a closed pool and timeouts (``command_timeout``) all raise
StoreUnavailable, so callers answer 503 instead of hanging.
"""

# ruff: noqa: S608 - SQL is assembled only from module constants and allow-listed
# column names; every value is a bound parameter.

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import orjson
from keygate.gateway.errors import BadRequest, NotFound, StoreUnavailable
from keygate.gateway.store.base import GROUP_WRITABLE, KEY_WRITABLE, USER_WRITABLE, KeyCheck, Store
from keygate.gateway.store.errors import GroupInUse, KeyLimitReached, KeyRevoked, UniqueViolation
from keygate.gateway.store.postgres.listener import (
    CHANNEL,
    CONNECTION_ERRORS,
    OnNotice,
    PgChangeListener,
)
from keygate.gateway.store.postgres.migrations import MIGRATION_LOCK, PG_MIGRATIONS
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
    utcnow,
)
from keygate.gateway.store.sqlite.store import (
    AUDIT_COLUMNS,
    GROUP_COLUMNS,
    KEY_COLUMNS,
    USER_COLUMNS,
    like_pattern,
    match_key_rows,
)

T = TypeVar("T")
Conn = Any  # asyncpg.Connection (asyncpg ships no type hints)
Tx = Callable[[Conn], Awaitable[T]]

AUTH_SELECT = (
    "k.id, k.name, k.status, k.groups, k.expires_at, k.owner_id, "
    "u.username, u.role, u.status, u.groups"
)
CHANGE_RETENTION = 86400.0  # seconds; as in the SQLite store
CHANGES_LOCK = 0x6B67_6368_6E67  # "kgchng": serialises the tail of every write
OWNER_LOCK_CLASS = 0x6B67_6F77  # "kgow": (class, hashtext(owner_id)) per-owner lock
# Deadlocks and serialisation failures are retried: the transaction has rolled back.
RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
TX_ATTEMPTS = 3
MIGRATION_TIMEOUT = 600.0  # seconds
# What a query on a connection the server has just dropped raises (never a timeout:
# waiting twice would double a hung request).
STALE_CONNECTION = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    ConnectionError,
)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


async def _init_connection(conn: Conn) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=_dumps, decoder=orjson.loads, schema="pg_catalog", format="text"
    )


def key_from_row(row: Any) -> KeyRecord:
    return KeyRecord(
        seq=row[0],
        id=row[1],
        prefix=row[2],
        last4=row[3],
        name=row[4],
        description=row[5],
        status=row[6],
        groups=tuple(row[7]),
        owner_id=row[8],
        owner_username=row[9],
        created_by_id=row[10],
        created_by_username=row[11],
        created_at=row[12],
        updated_at=row[13],
        last_used_at=row[14],
        expires_at=row[15],
        webhook_url=row[16],
        metadata=row[17],
        disabled_by_id=row[18],
        disabled_by_username=row[19],
        disabled_by_admin=row[20],
        expires_by_admin=row[21],
    )


def user_from_row(row: Any) -> UserRecord:
    return UserRecord(
        id=row[0],
        username=row[1],
        role=row[2],
        groups=tuple(row[3]),
        status=row[4],
        created_at=row[5],
        updated_at=row[6],
    )


def group_from_row(row: Any) -> GroupRecord:
    return GroupRecord(
        name=row[0],
        description=row[1],
        rules=tuple(row[2]),
        builtin=row[3],
        created_at=row[4],
        updated_at=row[5],
    )


def auth_from_row(row: Any) -> AuthRecord:
    return auth_with_grace(row, row[10])


def auth_with_grace(row: Any, until: datetime | None) -> AuthRecord:
    return AuthRecord(
        key_id=row[0],
        key_name=row[1],
        key_status=row[2],
        key_groups=tuple(row[3]),
        expires_at=_epoch(row[4]),
        owner_id=row[5],
        owner_username=row[6],
        owner_role=row[7],
        owner_status=row[8],
        owner_groups=tuple(row[9]) if row[9] is not None else (),
        grace_until=_epoch(until),
    )


def audit_from_row(row: Any) -> AuditRecord:
    return AuditRecord(
        id=row[0],
        at=row[1],
        action=row[2],
        target_type=row[3],
        target_id=row[4],
        actor_user_id=row[5],
        actor_username=row[6],
        actor_key_id=row[7],
        client_addr=row[8],
        changes=row[9],
    )


class PostgresStore(Store):
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        command_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.url = url  # may carry a password: never log it
        self._pool_size = max(1, pool_size)
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._pool: Any = None

    # --- lifecycle ------------------------------------------------------
    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self._pool_size,
                command_timeout=self._command_timeout,
                timeout=self._connect_timeout,
                init=_init_connection,
            )
            self.applied_on_open = tuple(await self.migrate())
            await self._tx(
                lambda c: c.execute(
                    "DELETE FROM changes WHERE at < now() - make_interval(secs => $1)",
                    CHANGE_RETENTION,
                )
            )
        except BaseException as exc:
            await self.close()
            if isinstance(exc, CONNECTION_ERRORS):
                reason = str(exc) or "no answer in time"
                raise StoreUnavailable(
                    f"Cannot open the PostgreSQL store ({type(exc).__name__}: {reason})."
                ) from exc
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                # Graceful close waits for in-flight queries; they are bounded too.
                await asyncio.wait_for(
                    pool.close(), timeout=self._command_timeout + self._connect_timeout
                )
            except CONNECTION_ERRORS:
                pool.terminate()

    async def migrate(self) -> list[int]:
        async def tx(conn: Conn) -> list[int]:
            # Nodes starting together queue here; the first one applies everything.
            # A migration may rewrite a large table: command_timeout is for requests.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK, timeout=MIGRATION_TIMEOUT
            )
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            applied = []
            for version, statements in PG_MIGRATIONS:
                if version <= current:
                    continue
                for stmt in statements:
                    await conn.execute(stmt, timeout=MIGRATION_TIMEOUT)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
                applied.append(version)
            return applied

        return await self._tx(tx)

    async def ping(self) -> None:
        await self._fetchval("SELECT 1")

    def listener(self, on_notice: OnNotice) -> PgChangeListener:
        """A LISTEN/NOTIFY watcher on its own connection; the caller starts and stops it."""
        return PgChangeListener(self.url, on_notice, connect_timeout=self._connect_timeout)

    # --- helpers ----------------------------------------------------------
    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Conn]:
        pool = self._pool
        if pool is None:
            raise StoreUnavailable
        try:
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                yield conn
        except CONNECTION_ERRORS as exc:
            raise StoreUnavailable from exc
        except (asyncpg.DataError, UnicodeEncodeError) as exc:
            # A value PostgreSQL cannot hold (a NUL in text, a lone surrogate):
            # the client's input, never a 500. Validation refuses what it knows.
            raise BadRequest("The request holds a value that cannot be stored.") from exc

    async def _tx(self, fn: Tx[T]) -> T:
        for attempt in range(1, TX_ATTEMPTS + 1):
            stage = "connecting"
            try:
                async with self._conn() as conn:
                    stage = "begin"
                    async with conn.transaction():
                        stage = "writing"
                        return await fn(conn)
            except RETRYABLE as exc:
                # Deadlock or serialisation failure: rolled back, safe to run again.
                if attempt == TX_ATTEMPTS:
                    raise StoreUnavailable from exc
            except StoreUnavailable as exc:
                # A pooled connection the server dropped, found out at BEGIN:
                # nothing was written, so run again on a fresh one. Anything later
                # (even at COMMIT) may have happened: never repeat it.
                if not _stale(exc, stage == "begin") or attempt == TX_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def _read(self, method: str, sql: str, *args: Any) -> Any:
        # One retry on a fresh connection: when the server drops connections
        # (restart, terminated backends, a proxy's idle timeout) the first query
        # on each pooled one can race the disconnect. A read is safe to repeat.
        # A failure to connect at all is not retried: it would only double the wait.
        for attempt in (1, 2):
            acquired = False
            try:
                async with self._conn() as conn:
                    acquired = True
                    return await getattr(conn, method)(sql, *args)
            except StoreUnavailable as exc:
                if not _stale(exc, acquired) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        return await self._read("fetch", sql, *args)  # type: ignore[no-any-return]

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._read("fetchrow", sql, *args)

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        return await self._read("fetchval", sql, *args)

    @staticmethod
    async def _finish(conn: Conn, audit: AuditEntry | None, changes: list[tuple[str, str]]) -> None:
        """Audit record, change notices and NOTIFY: the last step of every write.

        The lock is held until commit, so sequence numbers are handed out in
        commit order and no reader can see seq N before seq N-1 is visible.
        """
        await conn.execute("SELECT pg_advisory_xact_lock($1)", CHANGES_LOCK)
        if audit is not None:
            await conn.execute(
                "INSERT INTO audit (at, action, target_type, target_id, actor_user_id, "
                "actor_username, actor_key_id, client_addr, changes) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                utcnow(),
                audit.action,
                audit.target_type,
                audit.target_id,
                audit.actor_user_id,
                audit.actor_username,
                audit.actor_key_id,
                audit.client_addr,
                audit.changes,
            )
        seq = await conn.fetchval(
            "WITH ins AS (INSERT INTO changes (kind, ref) "
            "SELECT kind, ref FROM unnest($1::text[], $2::text[]) WITH ORDINALITY "
            "AS c(kind, ref, n) ORDER BY n RETURNING seq) SELECT max(seq) FROM ins",
            [kind for kind, _ in changes],
            [ref for _, ref in changes],
        )
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(seq))

    @staticmethod
    async def _lock_owner(conn: Conn, owner_id: str) -> None:
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", OWNER_LOCK_CLASS, owner_id
        )

    # --- verification -------------------------------------------------------
    async def auth_lookup(self, digest: bytes) -> AuthRecord | None:
        # The current digest, else a rolled-away one still in its grace period.
        row = await self._fetchrow(
            f"SELECT {AUTH_SELECT}, NULL::timestamptz AS until FROM keys k "
            "LEFT JOIN users u ON u.id = k.owner_id WHERE k.digest = $1 "
            f"UNION ALL SELECT {AUTH_SELECT}, r.until FROM retired_digests r "
            "JOIN keys k ON k.id = r.key_id LEFT JOIN users u ON u.id = k.owner_id "
            "WHERE r.digest = $1 ORDER BY until NULLS FIRST LIMIT 1",
            digest,
        )
        return auth_from_row(row) if row is not None else None

    async def auth_lookup_key(self, key_id: str, digest: bytes) -> KeyAuth:
        # As in the SQLite store: one row per retired digest, or one with NULLs.
        rows = await self._fetch(
            f"SELECT {AUTH_SELECT}, r.until, k.digest, r.digest FROM keys k "
            "LEFT JOIN users u ON u.id = k.owner_id "
            "LEFT JOIN retired_digests r ON r.key_id = k.id WHERE k.id = $1",
            key_id,
        )
        return match_key_rows(rows, digest, auth_with_grace)

    async def key_ids(self) -> list[str]:
        rows = await self._fetch("SELECT id FROM keys WHERE status != 'revoked'")
        return [r[0] for r in rows]

    # --- keys -------------------------------------------------------------------
    async def create_key(
        self, key: KeyRecord, digest: bytes, *, max_keys: int, audit: AuditEntry
    ) -> KeyRecord:
        async def tx(conn: Conn) -> KeyRecord:
            # Count and insert as one step for this owner, across every node.
            await self._lock_owner(conn, key.owner_id)
            count = await conn.fetchval(
                "SELECT count(*) FROM keys WHERE owner_id = $1 AND status != 'revoked'",
                key.owner_id,
            )
            if count >= max_keys:
                raise KeyLimitReached(max_keys)
            try:
                row = await conn.fetchrow(
                    "INSERT INTO keys (id, digest, prefix, last4, name, name_key, description, "
                    "status, groups, owner_id, owner_username, created_by_id, "
                    "created_by_username, created_at, updated_at, last_used_at, expires_at, "
                    "webhook_url, metadata, disabled_by_id, disabled_by_username, "
                    "disabled_by_admin, expires_by_admin) VALUES ($1, $2, $3, $4, $5, $6, $7, "
                    "$8, $9, $10, $11, $12, $13, $14, $15, NULL, $16, $17, $18, $19, $20, $21, "
                    f"$22) RETURNING {KEY_COLUMNS}",
                    key.id,
                    digest,
                    key.prefix,
                    key.last4,
                    key.name,
                    key.name.casefold(),
                    key.description,
                    key.status,
                    list(key.groups),
                    key.owner_id,
                    key.owner_username,
                    key.created_by_id,
                    key.created_by_username,
                    key.created_at,
                    key.updated_at,
                    key.expires_at,
                    key.webhook_url,
                    key.metadata,
                    key.disabled_by_id,
                    key.disabled_by_username,
                    key.disabled_by_admin,
                    key.expires_by_admin,
                )
            except asyncpg.UniqueViolationError as exc:
                raise _conflict(exc) from None
            await self._finish(conn, audit, [("key-created", key.id)])
            return key_from_row(row)

        return await self._tx(tx)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        row = await self._fetchrow(f"SELECT {KEY_COLUMNS} FROM keys WHERE id = $1", key_id)
        return key_from_row(row) if row else None

    async def list_keys(self, query: KeyQuery) -> Page[KeyRecord]:
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.before_seq is not None:
            where.append(f"seq < {arg(query.before_seq)}")
        if query.owner_id is not None:
            where.append(f"owner_id = {arg(query.owner_id)}")
        if query.search:
            p = arg(like_pattern(query.search))
            where.append(
                f"(lower(name) LIKE {p} ESCAPE '\\' OR lower(description) LIKE {p} ESCAPE '\\' "
                f"OR id LIKE {p} ESCAPE '\\')"
            )
        if query.group is not None:
            where.append(f"groups @> jsonb_build_array({arg(query.group)}::text)")
        if query.status == "expired":
            where.append(
                f"status = 'active' AND expires_at IS NOT NULL AND expires_at <= {arg(utcnow())}"
            )
        elif query.status == "active":
            where.append(
                f"status = 'active' AND (expires_at IS NULL OR expires_at > {arg(utcnow())})"
            )
        elif query.status is not None:
            where.append(f"status = {arg(query.status)}")
        sql = f"SELECT {KEY_COLUMNS} FROM keys"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY seq DESC LIMIT {arg(query.limit + 1)}"
        rows = await self._fetch(sql, *args)
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

        async def tx(conn: Conn) -> KeyRecord:
            # The row lock makes "revoked is final" and ``check`` hold against a
            # concurrent change of the same key.
            row = await conn.fetchrow(
                f"SELECT {KEY_COLUMNS} FROM keys WHERE id = $1 FOR UPDATE", key_id
            )
            if row is None:
                raise NotFound("No such key.")
            current = key_from_row(row)
            if current.status == "revoked":
                raise KeyRevoked
            writes = dict(fields)
            if check is not None:
                writes.update(_writable(check(current)))
            sets, args = _sets(writes, first=3)
            try:
                row = await conn.fetchrow(
                    f"UPDATE keys SET {sets}updated_at = $1 WHERE id = $2 RETURNING {KEY_COLUMNS}",
                    utcnow(),
                    key_id,
                    *args,
                )
            except asyncpg.UniqueViolationError as exc:
                raise _conflict(exc) from None
            if writes.get("status") == "revoked":
                await conn.execute("DELETE FROM retired_digests WHERE key_id = $1", key_id)
            await self._finish(conn, audit, [("key", key_id)])
            return key_from_row(row)

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
        async def tx(conn: Conn) -> KeyRecord:
            row = await conn.fetchrow(
                "SELECT digest, status FROM keys WHERE id = $1 FOR UPDATE", key_id
            )
            if row is None:
                raise NotFound("No such key.")
            if row[1] == "revoked":
                raise KeyRevoked
            now = utcnow()
            # Earlier grace tokens end now: only the token being replaced gets a grace.
            await conn.execute("DELETE FROM retired_digests WHERE key_id = $1", key_id)
            if grace_until is not None and grace_until > now:
                await conn.execute(
                    "INSERT INTO retired_digests (digest, key_id, until) VALUES ($1, $2, $3)",
                    row[0],
                    key_id,
                    grace_until,
                )
            try:
                rolled = await conn.fetchrow(
                    "UPDATE keys SET digest = $1, last4 = $2, updated_at = $3 WHERE id = $4 "
                    f"RETURNING {KEY_COLUMNS}",
                    digest,
                    last4,
                    now,
                    key_id,
                )
            except asyncpg.UniqueViolationError as exc:
                raise _conflict(exc) from None
            await self._finish(conn, audit, [("key", key_id)])
            return key_from_row(rolled)

        return await self._tx(tx)

    async def delete_key(self, key_id: str, *, audit: AuditEntry) -> None:
        async def tx(conn: Conn) -> None:
            deleted = await conn.fetchval("DELETE FROM keys WHERE id = $1 RETURNING id", key_id)
            if deleted is None:
                raise NotFound("No such key.")
            await conn.execute("DELETE FROM retired_digests WHERE key_id = $1", key_id)
            await self._finish(conn, audit, [("key", key_id)])

        await self._tx(tx)

    # --- users --------------------------------------------------------------
    async def create_user(self, user: UserRecord, *, audit: AuditEntry | None) -> UserRecord:
        async def tx(conn: Conn) -> UserRecord:
            try:
                await conn.execute(
                    f"INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    user.id,
                    user.username,
                    user.role,
                    list(user.groups),
                    user.status,
                    user.created_at,
                    user.updated_at,
                )
            except asyncpg.UniqueViolationError:
                raise UniqueViolation("username") from None
            await self._finish(conn, audit, [("user", user.id)])
            return user

        return await self._tx(tx)

    async def get_user(self, username: str) -> UserRecord | None:
        row = await self._fetchrow(
            f"SELECT {USER_COLUMNS} FROM users WHERE username = $1", username
        )
        return user_from_row(row) if row else None

    async def get_user_by_id(self, user_id: str) -> UserRecord | None:
        row = await self._fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)
        return user_from_row(row) if row else None

    async def list_users(self, limit: int, after: str | None) -> Page[UserRecord]:
        # COLLATE "C": byte order, as SQLite sorts, whatever the database's locale.
        rows = await self._fetch(
            f'SELECT {USER_COLUMNS} FROM users WHERE username COLLATE "C" > $1 '
            'ORDER BY username COLLATE "C" LIMIT $2',
            after or "",
            limit + 1,
        )
        items = [user_from_row(r) for r in rows[:limit]]
        return Page(items, None if len(rows) <= limit else items[-1].username)  # type: ignore[arg-type]

    async def update_user(
        self, username: str, fields: Mapping[str, Any], *, audit: AuditEntry
    ) -> UserRecord:
        unknown = set(fields) - USER_WRITABLE
        if unknown:
            raise ValueError(f"not writable: {sorted(unknown)}")

        async def tx(conn: Conn) -> UserRecord:
            sets, args = _sets(fields, first=3)
            row = await conn.fetchrow(
                f"UPDATE users SET {sets}updated_at = $1 WHERE username = $2 "
                f"RETURNING {USER_COLUMNS}",
                utcnow(),
                username,
                *args,
            )
            if row is None:
                raise NotFound("No such user.")
            await self._finish(conn, audit, [("user", row[0])])
            return user_from_row(row)

        return await self._tx(tx)

    async def delete_user(self, username: str, *, audit: AuditEntry) -> list[str]:
        async def tx(conn: Conn) -> list[str]:
            user_id = await conn.fetchval(
                "SELECT id FROM users WHERE username = $1 FOR UPDATE", username
            )
            if user_id is None:
                raise NotFound("No such user.")
            # No key may be created for this owner between the revoke and the delete.
            await self._lock_owner(conn, user_id)
            rows = await conn.fetch(
                "UPDATE keys SET status = 'revoked', updated_at = $1 "
                "WHERE owner_id = $2 AND status != 'revoked' RETURNING id",
                utcnow(),
                user_id,
            )
            revoked = [r[0] for r in rows]
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

    # --- groups -------------------------------------------------------------
    async def create_group(self, group: GroupRecord, *, audit: AuditEntry) -> GroupRecord:
        async def tx(conn: Conn) -> GroupRecord:
            try:
                await conn.execute(
                    f"INSERT INTO groups ({GROUP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
                    group.name,
                    group.description,
                    list(group.rules),
                    group.builtin,
                    group.created_at,
                    group.updated_at,
                )
            except asyncpg.UniqueViolationError:
                raise UniqueViolation("group_name") from None
            await self._finish(conn, audit, [("group", group.name)])
            return group

        return await self._tx(tx)

    async def get_group(self, name: str) -> GroupRecord | None:
        row = await self._fetchrow(f"SELECT {GROUP_COLUMNS} FROM groups WHERE name = $1", name)
        return group_from_row(row) if row else None

    async def list_groups(self) -> list[GroupRecord]:
        rows = await self._fetch(f'SELECT {GROUP_COLUMNS} FROM groups ORDER BY name COLLATE "C"')
        return [group_from_row(r) for r in rows]

    async def update_group(
        self, name: str, fields: Mapping[str, Any], *, audit: AuditEntry
    ) -> GroupRecord:
        unknown = set(fields) - GROUP_WRITABLE
        if unknown:
            raise ValueError(f"not writable: {sorted(unknown)}")

        async def tx(conn: Conn) -> GroupRecord:
            sets, args = _sets(fields, first=3)
            row = await conn.fetchrow(
                f"UPDATE groups SET {sets}updated_at = $1 "
                f"WHERE name = $2 AND NOT builtin RETURNING {GROUP_COLUMNS}",
                utcnow(),
                name,
                *args,
            )
            if row is None:
                raise NotFound("No such group.")
            await self._finish(conn, audit, [("group", name)])
            return group_from_row(row)

        return await self._tx(tx)

    async def delete_group(self, name: str, *, force: bool, audit: AuditEntry) -> None:
        async def tx(conn: Conn) -> None:
            found = await conn.fetchval("SELECT true FROM groups WHERE name = $1 FOR UPDATE", name)
            if found is None:
                raise NotFound("No such group.")
            held = "groups @> jsonb_build_array($1::text)"
            if not force:
                in_use = await conn.fetchval(
                    f"SELECT EXISTS (SELECT 1 FROM users WHERE {held}) "
                    f"OR EXISTS (SELECT 1 FROM keys WHERE {held})",
                    name,
                )
                if in_use:
                    raise GroupInUse
            changes: list[tuple[str, str]] = []
            now = utcnow()
            for table, kind in (("users", "user"), ("keys", "key")):
                # Removed in SQL, under the row lock: a concurrent change to a
                # holder's other groups is kept, not overwritten by a stale copy.
                rows = await conn.fetch(
                    f"UPDATE {table} SET groups = groups - $1::text, updated_at = $2 "
                    f"WHERE {held} RETURNING id",
                    name,
                    now,
                )
                changes += [(kind, r[0]) for r in rows]
            await conn.execute("DELETE FROM groups WHERE name = $1", name)
            await self._finish(conn, audit, [*changes, ("group", name)])

        await self._tx(tx)

    # --- audit, usage, changes -------------------------------------------------
    async def list_audit(self, limit: int, before_id: int | None) -> Page[AuditRecord]:
        rows = await self._fetch(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE id < $1 ORDER BY id DESC LIMIT $2",
            before_id if before_id is not None else 2**62,
            limit + 1,
        )
        items = [audit_from_row(r) for r in rows[:limit]]
        return Page(items, items[-1].id if len(rows) > limit else None)

    async def touch_last_used(self, stamps: Mapping[str, float]) -> None:
        if not stamps:
            return
        # Nodes flush concurrently: GREATEST merges, so a stamp never moves back,
        # and rows whose stamp is already newer are not rewritten at all.
        # Sorted ids keep the row-lock order stable between nodes (fewer deadlocks;
        # the rest are retried by _tx).
        ids = sorted(stamps)

        async def tx(conn: Conn) -> None:
            await conn.execute(
                "UPDATE keys k SET last_used_at = GREATEST(k.last_used_at, to_timestamp(v.t)) "
                "FROM unnest($1::text[], $2::float8[]) AS v(id, t) WHERE k.id = v.id "
                "AND (k.last_used_at IS NULL OR k.last_used_at < to_timestamp(v.t))",
                ids,
                [float(stamps[key_id]) for key_id in ids],
            )

        await self._tx(tx)

    async def change_seq(self) -> int:
        return int(await self._fetchval("SELECT coalesce(max(seq), 0) FROM changes"))

    async def changes_since(self, seq: int) -> list[Change]:
        rows = await self._fetch(
            "SELECT seq, kind, ref FROM changes WHERE seq > $1 ORDER BY seq", seq
        )
        return [Change(r[0], r[1], r[2]) for r in rows]


def _stale(exc: StoreUnavailable, on_pooled_connection: bool) -> bool:
    return on_pooled_connection and isinstance(exc.__cause__, STALE_CONNECTION)


def _sets(fields: Mapping[str, Any], *, first: int) -> tuple[str, list[Any]]:
    """``"a = $3, b = $4, "`` and its values; names come from the writable allow-lists."""
    sets: list[str] = []
    args: list[Any] = []
    for name, value in fields.items():
        if name in ("groups", "rules"):
            value = list(value)
        args.append(value)
        sets.append(f"{name} = ${first + len(args) - 1}")
        if name == "name":
            args.append(value.casefold())
            sets.append(f"name_key = ${first + len(args) - 1}")
    return "".join(f"{s}, " for s in sets), args


def _writable(fields: Mapping[str, Any]) -> Mapping[str, Any]:
    unknown = set(fields) - KEY_WRITABLE
    if unknown:
        raise ValueError(f"not writable: {sorted(unknown)}")
    return fields


def _conflict(exc: asyncpg.UniqueViolationError) -> UniqueViolation:
    return UniqueViolation("key_name" if exc.constraint_name == "keys_owner_name" else "other")
