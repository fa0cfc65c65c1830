"""PostgreSQL test fixtures: one throwaway database per session on the local server.

Import the fixtures into a test module by their function names
(``from tests.pg import pg_database_fixture, pg_url_fixture``); tests ask for
them as ``pg_database`` and ``pg_url``.
Tests that need PostgreSQL are skipped, with the reason, only when no server
answers at all; any other failure is a failure.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

PG_SERVER = os.environ.get("KEYGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
NO_SERVER = (OSError, TimeoutError, asyncpg.CannotConnectNowError)


def _run(fn: Callable[[], Awaitable[Any]]) -> Any:
    # Its own thread and loop: the session fixture may be first requested from
    # inside a running test loop (getfixturevalue in an async fixture).
    async def main() -> Any:
        return await fn()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(f"{PG_SERVER}/postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session", name="pg_database")
def pg_database_fixture() -> Iterator[str]:
    """The URL of a database created for this test session, dropped at its end."""
    name = f"kg_test_{secrets.token_hex(6)}"
    try:
        _run(lambda: _admin(f'CREATE DATABASE "{name}"'))
    except NO_SERVER as exc:
        pytest.skip(f"no PostgreSQL server answers at {PG_SERVER}: {type(exc).__name__}")
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        _run(lambda: _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def reset_schema(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()


@pytest.fixture(name="pg_url")
async def pg_url_fixture(pg_database: str) -> AsyncIterator[str]:
    """The session database, emptied: every test starts from an unmigrated schema."""
    await reset_schema(pg_database)
    yield pg_database


async def wait_until(
    predicate: Callable[[], bool], within: float, *, what: str = "condition"
) -> None:
    """Poll ``predicate`` every 10 ms; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)
