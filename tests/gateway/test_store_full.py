"""SQLite on a full disk (issue 16): 507 insufficient_storage, one log line per
state change, ``/ready`` degraded, the CLI's exit 1, recovery without a restart,
and a WAL kept small enough for a 2 MiB volume. Each test mounts its own tmpfs
(tests/support/volumes.py; skipped, with the reason, where it cannot)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from keygate.config.settings import AuthSettings
from keygate.gateway.errors import InsufficientStorage
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.service.bootstrap import create_first_admin
from keygate.gateway.store.sqlite.store import CHECKPOINT_AFTER, SQLiteStore
from tests.support.gateway import default_route, make_settings, start_keygate
from tests.support.polling import wait_for
from tests.support.processes import keygate_env, run_keygate
from tests.support.upstreams import Recorder
from tests.support.volumes import fill, tiny_volume

PREFIX = "/_keygate/api/v1"


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    with tiny_volume(tmp_path / "vol", "2m") as vol:
        yield vol


def _wal(db: Path) -> Path:
    return db.with_name(db.name + "-wal")


def _wal_size(db: Path) -> int:
    wal = _wal(db)
    return wal.stat().st_size if wal.exists() else 0


def _truncate_wal(db: Path) -> None:
    """Fold the WAL back and truncate it from another connection, so a full
    volume leaves no WAL space a write could reuse."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        assert busy == 0
    finally:
        conn.close()
    assert _wal_size(db) == 0


async def test_store_full_write_burst_fits_a_2mib_volume_and_wal_shrinks_after(
    volume: Path,
) -> None:
    # 300 keys, each write with its audit record and change notice: several MB
    # of WAL frames in all, on a volume of 2 MiB. SQLite's default checkpoint
    # (at 1000 pages, 4 MiB of WAL) let the WAL fill the volume.
    db = volume / "k.db"
    store = SQLiteStore(db)
    await store.open()
    try:
        ctx = ServiceContext(store, AuthSettings(max_keys_per_user=10_000))
        await create_first_admin(ctx)
        user = await store.get_user("admin")
        assert user is not None
        actor = Actor(user.id, user.username, None, ("admin",), "test")
        keys = Services.build(ctx).keys
        for i in range(300):
            await keys.create(actor, {"groups": ["default"], "name": f"burst-{i}"})
        # Once the burst is over the WAL is folded back and truncated.
        await wait_for(
            lambda: _wal_size(db) == 0, within=CHECKPOINT_AFTER + 3, what="the WAL truncated"
        )
    finally:
        await store.close()
    check = sqlite3.connect(db)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert check.execute("SELECT count(*) FROM keys").fetchone()[0] == 301
    finally:
        check.close()


async def test_store_full_write_is_507_ready_degraded_cli_exit_1_then_recovers(
    tmp_path: Path,
    volume: Path,
    upstream: Recorder,
    aiohttp_client: Callable[[TestServer], Awaitable[TestClient]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = volume / "k.db"
    url = f"sqlite:///{db}"
    settings = make_settings(tmp_path, default_route(upstream.url), url)
    kg = await start_keygate(settings, aiohttp_client)
    client, admin = kg.client, kg.bearer(kg.admin_token)
    token = await kg.make_key(["default"])
    async with client.get("/x", headers=kg.bearer(token)) as resp:
        assert resp.status == 200  # the key is cached now
    await asyncio.sleep(0.5)  # the last-used flush of that request is written
    _truncate_wal(db)
    filler = fill(volume)

    for _ in range(3):
        async with client.post(f"{PREFIX}/keys", json={"groups": ["default"]}, headers=admin) as r:
            assert r.status == 507, await r.text()
            assert r.content_type == "application/json"
            assert (await r.json())["error"]["code"] == "insufficient_storage"
    # One line for the state change, not one per request; no traceback.
    full_lines = [r for r in caplog.records if "out of space" in r.getMessage()]
    assert len(full_lines) == 1, [r.getMessage() for r in caplog.records]
    assert not any(r.exc_info for r in caplog.records if r.levelname != "DEBUG")
    assert "internal error" not in caplog.text

    async with client.get("/_keygate/ready") as resp:
        assert resp.status == 200  # every key still verifies, every request is proxied
        body = await resp.json()
    assert body["status"] == "degraded"
    assert body["checks"]["store"]["status"] == "not_writable"
    assert body["checks"]["store"]["code"] == "insufficient_storage"
    async with client.get("/x", headers=kg.bearer(token)) as resp:
        assert resp.status == 200  # reads, and so the proxy, keep working

    cli = await asyncio.to_thread(
        run_keygate,
        "keys", "create", "--group", "default",
        env=keygate_env(KEYGATE_STORE_URL=url), cwd=tmp_path, timeout=30,
    )
    assert cli.returncode == 1, cli.stderr
    assert "Traceback" not in cli.stderr
    assert cli.stderr.startswith("error: insufficient_storage: "), cli.stderr
    assert cli.stdout == ""

    # Space comes back: no restart needed.
    filler.unlink()
    async with client.get("/_keygate/ready") as resp:
        assert resp.status == 200
        assert (await resp.json())["checks"]["store"]["status"] == "ok"
    async with client.post(f"{PREFIX}/keys", json={"groups": ["default"]}, headers=admin) as r:
        assert r.status == 201, await r.text()
    back = [r for r in caplog.records if "takes writes again" in r.getMessage()]
    assert len(back) == 1


async def test_store_full_write_raises_insufficient_storage_and_reads_still_work(
    volume: Path,
) -> None:
    db = volume / "k.db"
    store = SQLiteStore(db)
    await store.open()
    try:
        ctx = ServiceContext(store, AuthSettings())
        await create_first_admin(ctx)
        user = await store.get_user("admin")
        assert user is not None
        actor = Actor(user.id, user.username, None, ("admin",), "test")
        _truncate_wal(db)
        fill(volume)
        with pytest.raises(InsufficientStorage):
            await Services.build(ctx).users.create(actor, {"username": "bob"})
        assert store.health.full
        assert (await store.write_problem()) is not None
        assert await store.get_user("admin") is not None
        assert await store.get_user("bob") is None
    finally:
        await store.close()
