"""SQLite store on aiosqlite: WAL, one writer connection, one reader connection.

The operations both databases share are in ``SqlStore`` (``sqlstore.py``);
this module holds what SQLite does its own way. Durability:
``synchronous=FULL`` on every connection (the pragma is per connection), so a
write acknowledged to a client survives kill -9 and power loss. ``BEGIN
IMMEDIATE`` takes the write lock up front, so a count and the write that
depends on it (the key limit) are one serialised step even across processes
(the CLI and every worker share the file): no row or owner lock is needed on
top.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson

from keygate.gateway.errors import StoreUnavailable
from keygate.gateway.store.records import AuditEntry
from keygate.gateway.store.rows import Codec, as_is, epoch_seconds, json_text
from keygate.gateway.store.sqlbase import CHANGE_RETENTION, Conn, Notices, Tx
from keygate.gateway.store.sqlite.connection import SQLiteConn
from keygate.gateway.store.sqlite.migrations import SQLITE_SCHEMA
from keygate.gateway.store.sqlkeys import quota_sets
from keygate.gateway.store.sqlstore import SqlStore

T = TypeVar("T")


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _lower(value: str | None) -> str | None:
    return value.lower() if isinstance(value, str) else value


# REAL epoch seconds, JSON text and 0/1 integers.
SQLITE_CODEC = Codec(
    time=_time,
    epoch=as_is,
    doc=orjson.loads,
    put_time=epoch_seconds,
    put_doc=json_text,
    put_flag=int,
)


class SQLiteStore(SqlStore):
    codec = SQLITE_CODEC
    schema = SQLITE_SCHEMA
    UNIQUE = (sqlite3.IntegrityError,)
    FOR_UPDATE = ""  # BEGIN IMMEDIATE already holds the whole file's write lock
    BYTEWISE = ""  # SQLite's default collation (BINARY) compares bytes
    # SQLite's lower() folds ASCII only; search must fold as PostgreSQL does.
    LOWER = "kg_lower"
    HOLDS_GROUP = "EXISTS (SELECT 1 FROM json_each(groups) WHERE value = {})"
    WITHOUT_GROUP = "(SELECT json_group_array(value) FROM json_each(groups) WHERE value != {})"

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
        await db.create_function(self.LOWER, 1, _lower, deterministic=True)
        return db

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = await self._connect()
            self.applied_on_open = tuple(await self.migrate())
            self._reader = await self._connect()
            await SQLiteConn(self._writer).execute(
                "DELETE FROM changes WHERE at < $1", time.time() - CHANGE_RETENTION
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

    async def ping(self) -> None:
        try:
            await self._fetchval("SELECT 1")
        except (sqlite3.Error, ValueError, AttributeError) as exc:
            raise StoreUnavailable from exc

    # --- transactions and reads --------------------------------------------
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
                result = await fn(SQLiteConn(db))
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
            return result

    async def _read(self, method: str, sql: str, *args: Any) -> Any:
        if self._reader is None:
            raise StoreUnavailable
        try:
            return await getattr(SQLiteConn(self._reader), method)(sql, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailable from exc

    async def _finish(self, conn: Conn, audit: AuditEntry | None, changes: Notices) -> None:
        if audit is not None:
            await self._audit(conn, audit)
        for kind, ref in changes:
            await conn.execute(
                "INSERT INTO changes (kind, ref, at) VALUES ($1, $2, $3)", kind, ref, time.time()
            )

    async def _lock_owner(self, conn: Conn, owner_id: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE holds the write lock for every process."""

    def _names_clash(self, exc: BaseException) -> bool:
        return "name_key" in str(exc)

    # --- what SQLite does its own way ----------------------------------------------
    async def touch_last_used(self, stamps: Mapping[str, float]) -> None:
        if not stamps:
            return

        async def tx(conn: Conn) -> None:
            await conn.executemany(
                "UPDATE keys SET last_used_at = max(coalesce(last_used_at, 0), $1) WHERE id = $2",
                [(stamp, key_id) for key_id, stamp in stamps.items()],
            )

        try:
            await self._tx(tx)
        except sqlite3.Error as exc:
            raise StoreUnavailable from exc

    async def add_quota_used(
        self, counts: Mapping[tuple[str, str], int]
    ) -> dict[str, tuple[str | None, int]]:
        if not counts:
            return {}
        sql = (
            f"UPDATE keys SET {quota_sets('quota_window', '$2', '$3', self.BYTEWISE)} "  # noqa: S608
            "WHERE id = $1 RETURNING quota_window, quota_used"
        )

        async def tx(conn: Conn) -> dict[str, tuple[str | None, int]]:
            out: dict[str, tuple[str | None, int]] = {}
            # An older window first: a key met at midnight ends in the new one.
            for (key_id, window), count in sorted(counts.items(), key=lambda c: c[0][::-1]):
                row = await conn.fetchrow(sql, key_id, window, count)
                if row is not None:
                    out[key_id] = (row[0], int(row[1]))
            return out

        try:
            return await self._tx(tx)
        except sqlite3.Error as exc:
            raise StoreUnavailable from exc

    async def data_version(self) -> int:
        """Changes whenever another connection commits: a near-free poll."""
        return int(await self._fetchval("PRAGMA data_version"))
