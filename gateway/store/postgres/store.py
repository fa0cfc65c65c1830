"""PostgreSQL store on an asyncpg pool, for several keygate nodes sharing one database.

The operations both databases share are in ``SqlStore`` (``sqlstore.py``);
this module holds what PostgreSQL does its own way, mostly how concurrency is
made safe:

- the key limit is counted under a per-owner advisory lock, so concurrent
  creates on any node cannot exceed it; a key, user or group a write depends
  on is read ``FOR UPDATE``;
- every write ends by appending its audit record and change notices under one
  global advisory lock held until commit, so change sequence numbers become
  visible in commit order: a reader that has seen seq N has seen every change
  below N. (Sequences still have gaps after rollbacks; nobody assumes they do not.)
- each write then runs ``pg_notify('keygate_changes', '<seq>')``, delivered on
  commit to every node's ``PgChangeListener`` (``listener()``).

Connection failures, a closed pool and timeouts (``command_timeout``) all raise
StoreUnavailable, so callers answer 503 instead of hanging; a write that finds
the server's disk full raises InsufficientStorage (507). Each is reported to
the store's health (``health.py``), which logs an outage once: the pool's own
"failed to restore the connection floor" traceback, repeated with back-off
for as long as the server is away, goes to debug (``quiet_pool_log``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import orjson

from keygate.gateway.errors import BadRequest, InsufficientStorage, StoreUnavailable
from keygate.gateway.store.health import StoreHealth, redact_url
from keygate.gateway.store.migrate import apply_pending
from keygate.gateway.store.postgres.listener import (
    CHANNEL,
    CONNECTION_ERRORS,
    OnNotice,
    PgChangeListener,
)
from keygate.gateway.store.postgres.migrations import MIGRATION_LOCK, PG_SCHEMA
from keygate.gateway.store.records import AuditEntry
from keygate.gateway.store.rows import Codec, as_is, epoch_seconds, json_text
from keygate.gateway.store.sqlbase import CHANGE_RETENTION, Conn, Notices, Tx
from keygate.gateway.store.sqlkeys import quota_sets
from keygate.gateway.store.sqlstore import SqlStore

T = TypeVar("T")

CHANGES_LOCK = 0x6B67_6368_6E67  # "kgchng": serialises the tail of every write
FAN_OUT_LOCK = 0x6B67_6661_6E6F  # "kgfano": one node fans webhook events out at a time
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


class _PoolFloorToDebug(logging.Filter):
    """asyncpg's pool logs a traceback at WARNING each time it fails to reopen its
    minimum of connections, every few seconds for as long as the server is
    away. The store's health says it once; the traceback is for debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Failed to restore the pool connection floor"):
            return True
        if not logging.getLogger("keygate.store").isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def quiet_pool_log() -> None:
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _PoolFloorToDebug) for f in pool_log.filters):
        pool_log.addFilter(_PoolFloorToDebug())


async def _init_connection(conn: Any) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json_text, decoder=orjson.loads, schema="pg_catalog", format="text"
    )


# asyncpg reads and writes timestamptz, jsonb (through the codec above) and
# boolean as Python values already: only epoch seconds need converting.
PG_CODEC = Codec(
    time=as_is, epoch=epoch_seconds, doc=as_is, put_time=as_is, put_doc=as_is, put_flag=as_is
)


class PostgresStore(SqlStore):
    codec = PG_CODEC
    schema = PG_SCHEMA
    UNIQUE = (asyncpg.UniqueViolationError,)
    FOR_UPDATE = " FOR UPDATE"
    # Every node delivers: a delivery another node is claiming is skipped.
    SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
    ONE_DELIVERER = False
    BYTEWISE = ' COLLATE "C"'  # byte order, as SQLite sorts, whatever the locale
    LOWER = "lower"
    HOLDS_GROUP = "groups @> jsonb_build_array({}::text)"
    WITHOUT_GROUP = "groups - {}::text"
    ARRAYS = True
    IMPORTED = "imported"
    ID_LIST = "= ANY($1::text[])"  # one prepared statement whatever the batch's size

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        command_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.url = url  # may carry a password: never log it
        self.health = StoreHealth(redact_url(url))
        self._pool_size = max(1, pool_size)
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._pool: Any = None

    # --- lifecycle ------------------------------------------------------
    async def open(self) -> None:
        quiet_pool_log()
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
                    f"Cannot open the PostgreSQL store at {self.health.name} "
                    f"({type(exc).__name__}: {reason})."
                ) from exc
            raise

    async def close(self) -> None:
        if self.key_lookups is not None:
            await self.key_lookups.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                # Graceful close waits for in-flight queries; they are bounded too.
                await asyncio.wait_for(
                    pool.close(), timeout=self._command_timeout + self._connect_timeout
                )
            except CONNECTION_ERRORS:
                pool.terminate()

    async def _migrate(self, conn: Conn) -> list[int]:
        # Nodes starting together queue here; the first one applies everything.
        # A migration may rewrite a large table: command_timeout is for requests.
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK, timeout=MIGRATION_TIMEOUT
        )
        return await apply_pending(conn, self.schema, statement_timeout=MIGRATION_TIMEOUT)

    async def ping(self) -> None:
        await self._fetchval("SELECT 1")

    def listener(self, on_notice: OnNotice) -> PgChangeListener:
        """A LISTEN/NOTIFY watcher on its own connection; the caller starts and stops it."""
        return PgChangeListener(self.url, on_notice, connect_timeout=self._connect_timeout)

    # --- connections, transactions and reads ---------------------------------------
    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        pool = self._pool
        if pool is None:
            raise StoreUnavailable
        try:
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                yield conn
        except asyncpg.exceptions.DiskFullError as exc:
            # SQLSTATE 53100 (an InsufficientResourcesError, so before the next
            # clause): nothing was written; the server answered.
            self.health.no_space(exc)
            raise InsufficientStorage from exc
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
                        result = await fn(conn)
                self.health.wrote()
                return result
            except RETRYABLE as exc:
                # Deadlock or serialisation failure: rolled back, safe to run again.
                if attempt == TX_ATTEMPTS:
                    raise StoreUnavailable from exc
            except StoreUnavailable as exc:
                # A pooled connection the server dropped, found out at BEGIN:
                # nothing was written, so run again on a fresh one. Anything later
                # (even at COMMIT) may have happened: never repeat it.
                if not _stale(exc, stage == "begin") or attempt == TX_ATTEMPTS:
                    self._unanswered(exc)
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
                    found = await getattr(conn, method)(sql, *args)
                self.health.answered()
                return found
            except StoreUnavailable as exc:
                if not _stale(exc, acquired) or attempt == 2:
                    self._unanswered(exc)
                    raise
        raise AssertionError("unreachable")

    def _unanswered(self, exc: StoreUnavailable) -> None:
        """Report a query that got no answer (not a store that is merely closed)."""
        if exc.__cause__ is not None:
            self.health.failed(exc)

    async def _finish(self, conn: Conn, audit: AuditEntry | None, changes: Notices) -> None:
        """Audit record, change notices and NOTIFY: the last step of every write.

        The lock is held until commit, so sequence numbers are handed out in
        commit order and no reader can see seq N before seq N-1 is visible.
        """
        await conn.execute("SELECT pg_advisory_xact_lock($1)", CHANGES_LOCK)
        if audit is not None:
            await self._audit(conn, audit)
        seq = await conn.fetchval(
            "WITH ins AS (INSERT INTO changes (kind, ref) "
            "SELECT kind, ref FROM unnest($1::text[], $2::text[]) WITH ORDINALITY "
            "AS c(kind, ref, n) ORDER BY n RETURNING seq) SELECT max(seq) FROM ins",
            [kind for kind, _ in changes],
            [ref for _, ref in changes],
        )
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(seq))

    async def _fan_out_lock(self, conn: Conn) -> bool:
        return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", FAN_OUT_LOCK))

    async def _lock_owner(self, conn: Conn, owner_id: str) -> None:
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", OWNER_LOCK_CLASS, owner_id
        )

    def _names_clash(self, exc: BaseException) -> bool:
        return getattr(exc, "constraint_name", None) == "keys_owner_name"

    # --- what PostgreSQL does its own way ---------------------------------------
    async def touch_last_used(
        self, stamps: Mapping[str, float], resolution: float = 0.0
    ) -> None:
        if not stamps:
            return
        # Nodes flush concurrently: GREATEST merges, so a stamp never moves back,
        # and rows whose stamp is already newer, or newer than the resolution
        # allows, are not rewritten at all.
        # Sorted ids keep the row-lock order stable between nodes (fewer deadlocks;
        # the rest are retried by _tx).
        ids = sorted(stamps)

        async def tx(conn: Conn) -> None:
            await conn.execute(
                "UPDATE keys k SET last_used_at = GREATEST(k.last_used_at, to_timestamp(v.t)) "
                "FROM unnest($1::text[], $2::float8[]) AS v(id, t) WHERE k.id = v.id "
                "AND (k.last_used_at IS NULL "
                "OR k.last_used_at < to_timestamp(v.t) - make_interval(secs => $3))",
                ids,
                [float(stamps[key_id]) for key_id in ids],
                float(resolution),
            )

        await self._tx(tx)

    async def add_quota_used(
        self, counts: Mapping[tuple[str, str], int]
    ) -> dict[str, tuple[str | None, int]]:
        if not counts:
            return {}
        # Each statement adds one count per key: a key met in two windows (at
        # midnight) takes two, the older window first. Ids sorted: a stable
        # row-lock order between nodes, as in touch_last_used.
        rounds: list[list[tuple[str, str, int]]] = []
        for (key_id, window), count in sorted(counts.items(), key=lambda c: c[0][::-1]):
            for batch in rounds:
                if all(row[0] != key_id for row in batch):
                    batch.append((key_id, window, count))
                    break
            else:
                rounds.append([(key_id, window, count)])
        sql = (
            f"UPDATE keys k SET {quota_sets('k.quota_window', 'v.w', 'v.n', self.BYTEWISE)} "  # noqa: S608
            "FROM unnest($1::text[], $2::text[], $3::bigint[]) AS v(id, w, n) "
            "WHERE k.id = v.id RETURNING k.id, k.quota_window, k.quota_used"
        )

        async def tx(conn: Conn) -> dict[str, tuple[str | None, int]]:
            out: dict[str, tuple[str | None, int]] = {}
            for batch in rounds:
                batch.sort()
                found = await conn.fetch(
                    sql, [r[0] for r in batch], [r[1] for r in batch], [r[2] for r in batch]
                )
                for row in found:
                    out[row[0]] = (row[1], int(row[2]))
            return out

        return await self._tx(tx)


def _stale(exc: StoreUnavailable, on_pooled_connection: bool) -> bool:
    return on_pooled_connection and isinstance(exc.__cause__, STALE_CONNECTION)
