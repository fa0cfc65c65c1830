"""SQLite store on aiosqlite: WAL, one writer connection, one reader connection.

The operations both databases share are in ``SqlStore`` (``sqlstore.py``);
this module holds what SQLite does its own way. Durability:
``synchronous=FULL`` on every connection (the pragma is per connection), so a
write acknowledged to a client survives kill -9 and power loss. ``BEGIN
IMMEDIATE`` takes the write lock up front, so a count and the write that
depends on it (the key limit) are one serialised step even across processes
(the CLI and every worker share the file): no row or owner lock is needed on
top.

Failures (``faults.py``): a write that finds the disk full raises
``InsufficientStorage`` (507), a database that does not answer as one
``StoreUnavailable`` (503); each is reported to the store's ``health`` once.
Opening never leaves a connection (a thread) behind, whatever fails. The WAL
is kept small for small volumes (``wal.py``).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson

from keygate.gateway.errors import (
    InsufficientStorage,
    KeygateError,
    StoreTooNew,
    StoreUnavailable,
)
from keygate.gateway.store.base import FULL_MESSAGE
from keygate.gateway.store.health import StoreHealth
from keygate.gateway.store.lookups import ReadNow
from keygate.gateway.store.records import AuditEntry
from keygate.gateway.store.rows import Codec, as_is, epoch_seconds, json_text
from keygate.gateway.store.sqlbase import CHANGE_RETENTION, Conn, Notices, Tx
from keygate.gateway.store.sqlite.connection import SQLiteConn, close_quietly, rollback
from keygate.gateway.store.sqlite.faults import free_bytes, is_full, is_unavailable, read_only
from keygate.gateway.store.sqlite.loopreads import LoopReader
from keygate.gateway.store.sqlite.migrations import SQLITE_SCHEMA
from keygate.gateway.store.sqlite.wake import WakeListener, notify, wake_dir
from keygate.gateway.store.sqlite.wal import WalKeeper, truncate_wal
from keygate.gateway.store.sqlkeys import quota_sets
from keygate.gateway.store.sqlstore import SqlStore

T = TypeVar("T")

# The WAL is kept small for small volumes: SQLite checkpoints on its own once
# the WAL holds this many pages (its default, 1000, is 4 MiB of WAL) and then
# truncates the file to WAL_SIZE_LIMIT bytes; after a burst of writes, once
# quiet for CHECKPOINT_AFTER seconds, a WAL past CHECKPOINT_MIN_WAL is
# checkpointed and truncated to nothing (``WalKeeper``), and so is this
# process's WAL when it closes the store.
WAL_AUTOCHECKPOINT_PAGES = 200
WAL_SIZE_LIMIT = 1024 * 1024
CHECKPOINT_AFTER = 0.5  # seconds
CHECKPOINT_MIN_WAL = 128 * 1024  # bytes: a smaller WAL waits for the next burst
# Free space that must appear on the volume after a write found it full
# before the store says it may take writes again (a write then proves it).
SPACE_BACK = 256 * 1024


def _reason(exc: BaseException) -> str:
    """SQLite's own words for a failure (the cause behind a keygate error)."""
    cause = exc.__cause__ if isinstance(exc, KeygateError) and exc.__cause__ else exc
    return str(cause) or type(cause).__name__


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _lower(value: str | None) -> str | None:
    return value.lower() if isinstance(value, str) else value


# The writer thread's niceness above the event loop's (see _background).
WRITER_NICENESS = 10


def _background() -> int:
    """Lower the calling thread's CPU priority; SQLite calls this on the writer's
    thread (a function runs on the thread that steps its statement).

    The writer's work (last-used stamps, quota counts, admin changes) shares
    the worker's core with the event loop, and a burst of it (a flush of
    thousands of stamps) made the loop wait for the scheduler: the cache-miss
    p99 doubled (docs/architecture.md#pauses). At +10 the kernel runs the loop
    first whenever both can run, and the writer still gets its share (nice
    is a weight: nothing starves). Linux sets niceness per thread; elsewhere
    this changes nothing.
    """
    if hasattr(os, "setpriority"):
        try:
            tid = threading.get_native_id()
            niceness = os.getpriority(os.PRIO_PROCESS, tid) + WRITER_NICENESS
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except OSError:
            return 0
        return 1
    return 0


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
    # One deliverer, elected by a lease (``sqlhooks.py``): nothing to skip.
    SKIP_LOCKED = ""
    ONE_DELIVERER = True
    BYTEWISE = ""  # SQLite's default collation (BINARY) compares bytes
    # SQLite's lower() folds ASCII only; search must fold as PostgreSQL does.
    LOWER = "kg_lower"
    HOLDS_GROUP = "EXISTS (SELECT 1 FROM json_each(groups) WHERE value = {})"
    WITHOUT_GROUP = "(SELECT json_group_array(value) FROM json_each(groups) WHERE value != {})"
    ARRAYS = False
    IMPORTED = "imported = 1"
    ID_LIST = "IN (SELECT value FROM json_each($1))"

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_ms: int = 10000,
        checkpoint_after: float = CHECKPOINT_AFTER,
        loop_reads: bool = True,
    ) -> None:
        self.path = Path(path)
        self.health = StoreHealth(str(self.path))
        self._busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._wal = WalKeeper(self._checkpoint, checkpoint_after)
        self._free_at_full: int | None = None
        # Verification lookups on the event loop (loopreads.py); off, on the reader thread.
        self._loop_reader = LoopReader(self.path) if loop_reads else None
        # The transaction running wrote change notices: wake the listeners (wake.py).
        self._noticed = False

    # --- lifecycle ------------------------------------------------------
    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = FULL")
            await db.execute("PRAGMA foreign_keys = ON")
            await db.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            await db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            await db.create_function(self.LOWER, 1, _lower, deterministic=True)
        except BaseException:
            # The connection's thread would outlive the process's last line
            # (it is not a daemon): close it whatever went wrong.
            await close_quietly(db)
            raise
        return db

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = await self._connect()
            await self._writer.create_function("kg_background", 0, _background)
            await self._writer.execute("SELECT kg_background()")
            self.applied_on_open = tuple(await self.migrate())
            self._reader = await self._connect()
            if self._loop_reader is not None:
                self._loop_reader.open()
            await self._tx(
                lambda conn: conn.execute(
                    "DELETE FROM changes WHERE at < $1", time.time() - CHANGE_RETENTION
                )
            )
        except BaseException as exc:
            # Whatever failed, or a stop signal that cancelled the start: no
            # connection (and so no thread) is left behind.
            await self.close()
            if isinstance(exc, StoreTooNew) or not isinstance(
                exc, (OSError, sqlite3.Error, StoreUnavailable, InsufficientStorage)
            ):
                raise
            raise StoreUnavailable(
                f"Cannot open the SQLite store at {self.path}: {_reason(exc)}."
            ) from exc

    async def close(self) -> None:
        if self.key_lookups is not None:
            await self.key_lookups.close()
        if self._loop_reader is not None:
            self._loop_reader.close()
        # Pending checkpoint first: it takes the write lock and the writer.
        await self._wal.stop()
        # A transaction still running for a cancelled caller ends first.
        async with self._write_lock:
            reader, writer = self._reader, self._writer
            self._reader = self._writer = None
            if writer is not None and self._wal.dirty:
                # Fold this process's writes back before it goes: the next
                # process to open the file finds a short WAL.
                await self._run_checkpoint(writer)
            for db in (reader, writer):
                if db is not None:
                    await close_quietly(db)

    async def ping(self) -> None:
        try:
            await self._fetchval("SELECT 1")
        except (sqlite3.Error, ValueError, AttributeError) as exc:
            raise StoreUnavailable from exc

    async def write_problem(self) -> KeygateError | None:
        directory = self.path.parent
        if read_only(directory):
            return StoreUnavailable(
                "The key store's file system is read-only: changes cannot be recorded.",
                code="store_read_only",
            )
        if not self.health.full:
            return None
        free = free_bytes(directory)
        before = self._free_at_full
        if free is not None and before is not None and free - before >= SPACE_BACK:
            # Space was freed since the write that failed: say so now, not
            # only once some write happens to succeed (a probe that kept
            # reporting "full" would never see one).
            self.health.space_back(f"{free} bytes free")
            return None
        return InsufficientStorage(FULL_MESSAGE)

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
                raise self._fault(exc) or StoreUnavailable() from exc
            self._noticed = False
            try:
                result = await fn(SQLiteConn(db))
                await db.execute("COMMIT")
            except sqlite3.Error as exc:
                await rollback(db)
                fault = self._fault(exc)
                if fault is None:
                    raise
                raise fault from exc
            except BaseException:
                await rollback(db)
                raise
            self.health.wrote()
            self._wal.wrote()
            if self._noticed:
                notify(wake_dir(self.path))
            return result

    def _fault(self, exc: sqlite3.Error) -> KeygateError | None:
        """The error a failed statement means for callers (None: leave it as it is),
        reported to the store's health."""
        if is_full(exc):
            if not self.health.full:
                self._free_at_full = free_bytes(self.path.parent)
            self.health.no_space(exc)
            return InsufficientStorage()
        if is_unavailable(exc):
            self.health.failed(exc)
            return StoreUnavailable()
        return None

    async def _checkpoint(self) -> None:
        """After a burst of writes (``WalKeeper``): fold the WAL into the database
        and truncate it, so a small volume is not eaten by a WAL nobody needs.
        A WAL still small (a last-used flush, a change or two) is left to the
        next burst: a checkpoint costs fsyncs."""
        try:
            size = self.path.with_name(self.path.name + "-wal").stat().st_size
        except OSError:
            return
        if size < CHECKPOINT_MIN_WAL:
            return
        async with self._write_lock:
            db = self._writer
            if db is not None:
                await self._run_checkpoint(db)

    async def _run_checkpoint(self, db: aiosqlite.Connection) -> None:
        if await truncate_wal(db, self._busy_timeout_ms, self.path):
            self._wal.dirty = False

    async def _read(self, method: str, sql: str, *args: Any) -> Any:
        if self._reader is None:
            raise StoreUnavailable
        try:
            found = await getattr(SQLiteConn(self._reader), method)(sql, *args)
        except sqlite3.Error as exc:
            if is_unavailable(exc):
                self.health.failed(exc)
            raise StoreUnavailable from exc
        self.health.answered()
        return found

    async def _finish(self, conn: Conn, audit: AuditEntry | None, changes: Notices) -> None:
        if audit is not None:
            await self._audit(conn, audit)
        self._noticed = self._noticed or bool(changes)
        for kind, ref in changes:
            await conn.execute(
                "INSERT INTO changes (kind, ref, at) VALUES ($1, $2, $3)", kind, ref, time.time()
            )

    async def _lock_owner(self, conn: Conn, owner_id: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE holds the write lock for every process."""

    def _names_clash(self, exc: BaseException) -> bool:
        return "name_key" in str(exc)

    def listener(self, on_notice: Callable[[], Awaitable[object]]) -> WakeListener:
        """Wake-ups from the other processes' commits (wake.py); the caller starts it."""
        return WakeListener(self.path, on_notice)

    # --- what SQLite does its own way ----------------------------------------------
    def _id_list(self, key_ids: list[str]) -> str:
        return orjson.dumps(key_ids).decode()

    def _auth_rows_now(self) -> ReadNow | None:
        reader = self._loop_reader
        if reader is None:
            return None
        sql = self._auth_sql()

        def read(key_ids: list[str]) -> Sequence[Any] | None:
            found = reader.fetch(sql, self._id_list(key_ids))
            if found is not None:
                self.health.answered()
            return found

        return read

    async def touch_last_used(
        self, stamps: Mapping[str, float], resolution: float = 0.0
    ) -> None:
        if not stamps:
            return

        async def tx(conn: Conn) -> None:
            await conn.executemany(
                "UPDATE keys SET last_used_at = $1 WHERE id = $2 "
                "AND (last_used_at IS NULL OR last_used_at < $1 - $3)",
                [(stamp, key_id, resolution) for key_id, stamp in stamps.items()],
            )

        try:
            await self._tx(tx)
        except sqlite3.Error as exc:  # one the store does not sort: still not a crash
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

    def data_version_now(self) -> int | None:
        """The same on the loop-read connection: no thread hand-off, so the change
        feed can afford to look often (gateway/auth/changes.py)."""
        reader = self._loop_reader
        return None if reader is None else reader.data_version()
