"""The local PostgreSQL server (``KEYGATE_TEST_PG``, trust auth): throwaway databases.

Tests never stop or reconfigure that server; they create databases, empty
them and drop them. The fixtures ``pg_database`` (one per session) and
``pg_url`` (that database, emptied for each test) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg  # type: ignore[import-untyped]

PG_SERVER = os.environ.get("KEYGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
# What "no server answers at all" looks like: only then is a test skipped.
NO_SERVER = (OSError, TimeoutError, asyncpg.CannotConnectNowError)


def run_in_thread(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine to completion on a loop of its own, in a thread of its own:
    a session fixture may be first requested from inside a running test loop."""

    async def main() -> Any:
        return await fn()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


async def admin_sql(sql: str) -> None:
    """``sql`` on the server's ``postgres`` database (CREATE/DROP DATABASE)."""
    conn = await asyncpg.connect(f"{PG_SERVER}/postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_database(prefix: str = "kg_test") -> str:
    """A new, empty database; its URL."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    await admin_sql(f'CREATE DATABASE "{name}"')
    return f"{PG_SERVER}/{name}"


async def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    await admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def reset_schema(url: str) -> None:
    """Everything in ``url``'s database dropped: an unmigrated schema."""
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()
