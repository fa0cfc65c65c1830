"""An aiosqlite connection that takes the shared statements as written.

keygate's SQL numbers its parameters as PostgreSQL does (``$1``, ``$2``, …,
any order, any number of times). SQLite's own numbered form (``?1``) is
avoided: Python 3.12 took it for a named placeholder and warned
(python/cpython#117995), and from 3.14 a named placeholder with a sequence
of values is an error. So each statement gets plain ``?`` placeholders, and
its values are bound in the order the placeholders appear.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

_NUMBERED = re.compile(r"\$(\d+)")

log = logging.getLogger("keygate.store")


@functools.lru_cache(maxsize=512)
def _qmark(sql: str) -> tuple[str, tuple[int, ...]]:
    """``sql`` with ``?`` placeholders, and which value each one takes."""
    order: list[int] = []

    def one(match: re.Match[str]) -> str:
        order.append(int(match.group(1)) - 1)
        return "?"

    return _NUMBERED.sub(one, sql), tuple(order)


def bind(sql: str, args: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
    text, order = _qmark(sql)
    return text, tuple(args[i] for i in order)


class SQLiteConn:
    """asyncpg's ``execute``/``fetch``/``fetchrow``/``fetchval`` on one aiosqlite
    connection (the ``Conn`` of ``sqlbase.py``)."""

    __slots__ = ("db",)

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def execute(
        self, sql: str, *args: Any, timeout: float | None = None  # noqa: ASYNC109
    ) -> int:
        """Run ``sql``; the number of rows it changed. There is no per-statement
        timeout: ``busy_timeout`` bounds the wait for another writer's lock."""
        cursor = await self.db.execute(*bind(sql, args))
        return cursor.rowcount

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        text, order = _qmark(sql)
        await self.db.executemany(text, [tuple(row[i] for i in order) for row in args])

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        # One trip to aiosqlite's thread, as execute() alone is: every statement
        # costs a round trip, and keygate's writes hold the lock across theirs.
        return list(await self.db.execute_fetchall(*bind(sql, args)))

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        found = await self.fetch(sql, *args)
        return found[0] if found else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]


async def close_quietly(db: aiosqlite.Connection) -> None:
    """Close, and so end the connection's thread (not a daemon: it would hold
    the process's exit), even if SQLite complains."""
    try:
        await db.close()
    except (sqlite3.Error, ValueError) as exc:
        log.debug("closing an SQLite connection: %s", exc)


async def rollback(db: aiosqlite.Connection) -> None:
    """ROLLBACK if a transaction is open: a full disk or an I/O error may have
    rolled it back already, and a failing ROLLBACK must not hide why."""
    if db.in_transaction:
        try:
            await db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.debug("ROLLBACK failed: %s", exc)
