"""``auth.stale_if_error`` (issue 16): while the store does not answer, a cached
key past ``cache_ttl`` stays usable that many seconds more — with the same
status checks, logged once per outage and counted — and no longer."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestClient, TestServer

from keygate.config.settings import AuthSettings
from keygate.gateway.errors import StoreUnavailable
from keygate.gateway.state import changes_key
from keygate.gateway.store.lookups import ReadNow
from keygate.gateway.store.sqlbase import Tx
from keygate.gateway.store.sqlite.store import SQLiteStore
from tests.support.gateway import Keygate, default_route, key_id, make_settings, start_keygate
from tests.support.upstreams import Recorder

TTL = 0.3
T = TypeVar("T")


class OutageStore(SQLiteStore):
    """The real store, whose reads and writes fail as a lost database's do while
    ``down``."""

    down = False

    def _lost(self) -> StoreUnavailable:
        exc = sqlite3.OperationalError("disk I/O error")
        self.health.failed(exc)
        error = StoreUnavailable()
        error.__cause__ = exc
        return error

    async def _read(self, method: str, sql: str, *args: Any) -> Any:
        if self.down:
            raise self._lost()
        return await super()._read(method, sql, *args)

    async def _tx(self, fn: Tx[T]) -> T:
        if self.down:
            raise self._lost()
        return await super()._tx(fn)

    def _auth_rows_now(self) -> ReadNow | None:
        # A lookup on the loop that meets an I/O error hands its batch to the
        # reader thread (store/sqlite/loopreads.py), whose read fails as above.
        read = super()._auth_rows_now()
        if read is None:
            return None
        return lambda key_ids: None if self.down else read(key_ids)


Start = Callable[..., Awaitable[tuple[Keygate, OutageStore]]]


@pytest.fixture
async def start(
    tmp_path: Path,
    upstream: Recorder,
    aiohttp_client: Callable[[TestServer], Awaitable[TestClient]],
) -> AsyncIterator[Start]:
    stores: list[OutageStore] = []

    async def factory(**auth: Any) -> tuple[Keygate, OutageStore]:
        store = OutageStore(tmp_path / "k.db")
        await store.open()
        stores.append(store)
        settings = make_settings(tmp_path, default_route(upstream.url), cache_ttl=TTL, **auth)
        return await start_keygate(settings, aiohttp_client, store=store), store

    yield factory
    for store in stores:
        store.down = False
        await store.close()


async def status(kg: Keygate, token: str) -> tuple[int, str | None]:
    async with kg.client.get("/x", headers=kg.bearer(token)) as resp:
        if resp.status == 200:
            return 200, None
        return resp.status, (await resp.json())["error"]["code"]


def test_stale_if_error_default_is_30s_as_kongs_db_resurrect_ttl() -> None:
    assert AuthSettings().stale_if_error == 30.0


async def test_stale_if_error_cached_key_past_ttl_works_while_store_down(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    kg, store = await start(stale_if_error=30.0)
    token = await kg.make_key(["default"])
    other = await kg.make_key(["default"])  # never used: never cached
    assert await status(kg, token) == (200, None)  # cached now
    store.down = True
    await asyncio.sleep(TTL + 0.1)  # past cache_ttl
    for _ in range(3):
        assert await status(kg, token) == (200, None)
    assert kg.gw.verifier.stale_served == 3
    assert store.health.stale_answers == 3
    admitted = [r for r in caplog.records if "past auth.cache_ttl" in r.getMessage()]
    assert len(admitted) == 1  # logged once per outage, counted every time
    # A key never cached still needs the store.
    assert await status(kg, other) == (503, "store_unavailable")
    # Recovery reports what was let through, once.
    store.down = False
    assert await status(kg, token) == (200, None)
    back = [r.getMessage() for r in caplog.records if "answers again" in r.getMessage()]
    assert len(back) == 1 and "3 requests" in back[0], back


async def test_stale_if_error_zero_fails_cached_key_past_ttl(start: Start) -> None:
    kg, store = await start(stale_if_error=0.0)
    token = await kg.make_key(["default"])
    assert await status(kg, token) == (200, None)
    store.down = True
    await asyncio.sleep(TTL + 0.1)
    assert await status(kg, token) == (503, "store_unavailable")
    assert kg.gw.verifier.stale_served == 0


async def test_stale_if_error_past_the_window_fails(start: Start) -> None:
    kg, store = await start(stale_if_error=0.3)
    token = await kg.make_key(["default"])
    assert await status(kg, token) == (200, None)
    store.down = True
    await asyncio.sleep(TTL + 0.1)
    assert await status(kg, token) == (200, None)
    await asyncio.sleep(0.4)  # past cache_ttl + stale_if_error
    assert await status(kg, token) == (503, "store_unavailable")


async def echoed(kg: Keygate) -> None:
    """This process's own change notices applied: their echo through the change
    feed evicts what they affect, and must not evict an entry the test caches
    after the write."""
    await kg.client.server.app[changes_key].watcher.poll()


async def test_stale_if_error_keeps_status_checks(start: Start) -> None:
    kg, store = await start(stale_if_error=30.0)
    token = await kg.make_key(["default"])
    await kg.services.keys.update(await kg.admin_actor(), key_id(token), {"status": "disabled"})
    await echoed(kg)
    assert await status(kg, token) == (401, "key_disabled")  # cached as disabled
    store.down = True
    await asyncio.sleep(TTL + 0.1)
    assert await status(kg, token) == (401, "key_disabled")


async def test_stale_if_error_entry_evicted_by_a_change_is_not_used(start: Start) -> None:
    kg, store = await start(stale_if_error=30.0)
    token = await kg.make_key(["default"])
    assert await status(kg, token) == (200, None)
    await kg.gw.memory.apply("key", key_id(token))  # a notice heard before the outage
    store.down = True
    await asyncio.sleep(TTL + 0.1)
    assert await status(kg, token) == (503, "store_unavailable")


async def test_stale_if_error_outage_logged_once_without_traceback(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    kg, store = await start(stale_if_error=30.0)
    token = await kg.make_key(["default"])
    assert await status(kg, token) == (200, None)
    store.down = True
    await asyncio.sleep(1.0)  # the change feed polls every 50 ms meanwhile
    for _ in range(5):
        await status(kg, token)
    store.down = False
    await asyncio.sleep(0.3)
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    down = [r for r in lines if r.name == "keygate.store" and "unreachable" in r.getMessage()]
    up = [r for r in lines if "answers again" in r.getMessage()]
    assert len(down) == 1 and len(up) == 1, [r.getMessage() for r in lines]
    assert not any(r.exc_info for r in lines)
