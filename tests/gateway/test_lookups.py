"""Cache misses batched per loop pass (gateway/store/lookups.py), on both stores,
and SQLite's lookups on the event loop (gateway/store/sqlite/loopreads.py).

The batching is observed on the store itself: how many statements were sent
and how many key ids they asked for."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from keygate.gateway.errors import Unauthorized
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.store.base import Store
from keygate.gateway.store.lookups import MAX_BATCH, KeyLookups
from keygate.gateway.store.postgres.store import PostgresStore
from keygate.gateway.store.sqlite.store import SQLiteStore
from tests.support.gateway import Keygate, default_route, key_id, make_settings, start_keygate
from tests.support.pg import reset_schema
from tests.support.polling import wait_for
from tests.support.upstreams import Recorder

Start = Callable[[], Awaitable[Keygate]]


@pytest.fixture(params=["sqlite", "postgres"])
async def kg(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    upstream: Recorder,
    aiohttp_client: Callable[[TestServer], Awaitable[TestClient]],
) -> AsyncIterator[Keygate]:
    url = None
    if request.param == "postgres":
        url = str(request.getfixturevalue("pg_database"))
        await reset_schema(url)
    settings = make_settings(
        tmp_path, default_route(upstream.url), store_url=url, max_keys_per_user=100
    )
    yield await start_keygate(settings, aiohttp_client)


def lookups(kg: Keygate) -> KeyLookups:
    found = kg.gw.store.key_lookups
    assert found is not None, "no miss has been looked up yet"
    return found  # type: ignore[no-any-return]


async def fresh_keys(kg: Keygate, n: int) -> list[str]:
    """``n`` keys, known to the gateway's key-id set, none of them cached."""
    tokens = [await kg.make_key(["default"]) for _ in range(n)]
    ids = kg.gw.verifier.key_ids
    await wait_for(lambda: all(key_id(t) in ids for t in tokens), what="the keys' creation notices")
    return tokens


async def status(kg: Keygate, token: str) -> int:
    async with kg.client.get("/x", headers=kg.bearer(token)) as resp:
        return resp.status


async def warm(kg: Keygate) -> None:
    """One miss, so the store's batcher exists."""
    (token,) = await fresh_keys(kg, 1)
    assert await status(kg, token) == 200


async def test_misses_of_one_pass_are_one_query(kg: Keygate) -> None:
    await warm(kg)
    tokens = await fresh_keys(kg, 30)
    batcher = lookups(kg)
    queries, asked = batcher.queries, batcher.asked
    verifier = kg.gw.verifier
    principals = await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert [p.key_id for p in principals] == [key_id(t) for t in tokens]
    assert (batcher.queries - queries, batcher.asked - asked) == (1, 30)
    # Cached now: no statement at all.
    await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert batcher.queries - queries == 1


async def test_concurrent_misses_for_one_key_share_its_lookup(kg: Keygate) -> None:
    await warm(kg)
    (token,) = await fresh_keys(kg, 1)
    batcher = lookups(kg)
    queries, asked = batcher.queries, batcher.asked
    statuses = await asyncio.gather(*(status(kg, token) for _ in range(20)))
    assert statuses == [200] * 20
    # However the 20 requests fell into loop passes, one key id was asked once
    # per statement, and the first statement cached it.
    assert batcher.asked - asked == batcher.queries - queries >= 1


async def test_one_pass_of_more_misses_than_a_batch_is_split(kg: Keygate) -> None:
    await warm(kg)
    batcher = lookups(kg)
    queries, asked = batcher.queries, batcher.asked
    ids = [f"nokey{i:07d}" for i in range(MAX_BATCH + 10)]
    found = await asyncio.gather(*(batcher.rows(i) for i in ids))
    assert found == [[]] * len(ids)  # no such keys
    assert (batcher.queries - queries, batcher.asked - asked) == (2, MAX_BATCH + 10)


async def test_a_cancelled_miss_cancels_no_other(kg: Keygate) -> None:
    await warm(kg)
    (token,) = await fresh_keys(kg, 1)
    batcher = lookups(kg)
    kid = key_id(token)
    first = asyncio.ensure_future(batcher.rows(kid))
    second = asyncio.ensure_future(batcher.rows(kid))
    await asyncio.sleep(0)  # both are waiting for the same batch
    first.cancel()
    rows = await second
    assert len(rows) == 1 and rows[0][0] == kid
    assert first.cancelled()


async def other_writer(kg: Keygate) -> tuple[Store, Services, Actor]:
    """Another process's view of the same store: its writes reach the gateway
    only through the change feed."""
    url = kg.settings.store.url
    store: Store
    if url.startswith("sqlite://"):
        store = SQLiteStore(url.removeprefix("sqlite:///"), loop_reads=False)
    else:
        store = PostgresStore(url, pool_size=2)
    await store.open()
    ctx = ServiceContext(store, kg.settings.auth)
    return store, Services.build(ctx), await kg.admin_actor()


@pytest.mark.parametrize("change", ["revoke", "disable", "delete", "roll"])
async def test_changed_keys_are_refused_after_the_change_feed(kg: Keygate, change: str) -> None:
    tokens = await fresh_keys(kg, 3)
    assert [await status(kg, t) for t in tokens] == [200] * 3  # cached, through batches
    store, services, actor = await other_writer(kg)
    try:
        changed = tokens[1]
        kid = key_id(changed)
        if change == "revoke":
            await services.keys.revoke(actor, kid)
        elif change == "disable":
            await services.keys.set_status(actor, kid, "disabled")
        elif change == "delete":
            await services.keys.delete(actor, kid)
        else:
            await services.keys.roll(actor, kid, {"grace_seconds": 0})
    finally:
        await store.close()
    await wait_for(
        lambda: _refused(kg, changed),
        what=f"the {change} to reach the gateway",
    )
    # Its neighbours in the same batches are untouched.
    assert [await status(kg, t) for t in (tokens[0], tokens[2])] == [200, 200]
    # And a fresh miss (the entry evicted, read again through a batch) still refuses it.
    kg.gw.verifier.cache.clear()
    assert await status(kg, changed) == 401


async def _refused(kg: Keygate, token: str) -> bool:
    return await status(kg, token) == 401


# --- SQLite: the lookups on the loop -----------------------------------------
@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "k.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def make_key(store: SQLiteStore) -> str:
    from keygate.config.settings import AuthSettings
    from keygate.gateway.service.bootstrap import create_first_admin

    issued = await create_first_admin(ServiceContext(store, AuthSettings()))
    return issued.token


async def test_sqlite_lookups_read_on_the_loop_while_a_writer_holds_the_lock(
    sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    token = await make_key(sqlite_store)
    kid = key_id(token)
    # Another process in the middle of a write transaction: a reader in WAL
    # mode reads the last commit without waiting (busy_timeout is 10 s).
    other = sqlite3.connect(tmp_path / "k.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE keys SET name = 'renamed' WHERE id = ?", (kid,))
        started = time.monotonic()
        found = await sqlite_store.auth_lookup_key(kid, b"")
        assert time.monotonic() - started < 2.0
        assert found.record is None and len(found.digests) == 1  # the key, not this digest
        batcher = sqlite_store.key_lookups
        assert batcher is not None and batcher.read_on_loop == 1
        other.execute("COMMIT")
    finally:
        other.close()
    # The next read sees that commit: each statement reads the newest snapshot.
    rows = await batcher.rows(kid)
    assert rows[0][1] == "renamed"
    assert batcher.read_on_loop == 2


async def test_sqlite_lookups_fall_back_to_the_thread(sqlite_store: SQLiteStore) -> None:
    token = await make_key(sqlite_store)
    kid = key_id(token)
    await sqlite_store.auth_lookup_key(kid, b"")
    batcher = sqlite_store.key_lookups
    assert batcher is not None and batcher.read_on_loop == 1
    sqlite_store._loop_reader.close()  # type: ignore[union-attr]  # as if it could not open
    found = await sqlite_store.auth_lookup_key(kid, b"")
    assert len(found.digests) == 1
    assert (batcher.read_on_loop, batcher.queries) == (1, 2)


async def test_sqlite_loop_reads_off_reads_on_the_thread(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "k.db", loop_reads=False)
    await store.open()
    try:
        token = await make_key(store)
        found = await store.auth_lookup_key(key_id(token), b"")
        assert len(found.digests) == 1
        assert store.key_lookups is not None and store.key_lookups.read_on_loop == 0
    finally:
        await store.close()


async def test_unknown_key_ids_are_refused_through_a_batch(kg: Keygate) -> None:
    await warm(kg)
    (token,) = await fresh_keys(kg, 1)
    await kg.services.keys.delete(await kg.admin_actor(), key_id(token))
    await wait_for(lambda: _refused(kg, token), what="the delete")
    with pytest.raises(Unauthorized):
        await kg.gw.verifier.verify(token)


async def test_sqlite_loop_probe_moves_with_other_commits_and_reads_see_them(
    sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    token = await make_key(sqlite_store)
    kid = key_id(token)
    first = sqlite_store.data_version_now()
    assert first is not None and sqlite_store.data_version_now() == first  # nothing committed
    for name in ("one", "two"):
        other = sqlite3.connect(tmp_path / "k.db", isolation_level=None)
        try:
            other.execute("UPDATE keys SET name = ? WHERE id = ?", (name, kid))
        finally:
            other.close()
        moved = sqlite_store.data_version_now()
        assert moved is not None and moved != first
        first = moved
        rows = await sqlite_store.key_lookups.rows(kid) if sqlite_store.key_lookups else []
        if not rows:
            await sqlite_store.auth_lookup_key(kid, b"")
            assert sqlite_store.key_lookups is not None
            rows = await sqlite_store.key_lookups.rows(kid)
        assert rows[0][1] == name
