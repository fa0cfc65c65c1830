"""Last used (docs/reference.md#the-proxy): batched off the request path, one write
per key per flush,
flushed on a graceful stop — in the app and in a real ``keygate serve`` process."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from keygate.config.settings import AuthSettings
from keygate.gateway.auth.usage import UsageRecorder
from keygate.gateway.errors import StoreUnavailable
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.service.bootstrap import create_first_admin
from keygate.gateway.store import Store, open_store
from keygate.gateway.store.sqlite.store import SQLiteStore
from tests.support.gateway import GatewayFactory, Keygate, default_route, key_id
from tests.support.polling import wait_for
from tests.support.processes import keygate_env, start_node
from tests.support.raw import free_port
from tests.support.stores import CountingFactory
from tests.support.upstreams import Recorder


async def last_used(store: Store, token: str) -> float | None:
    record = await store.get_key(key_id(token))
    assert record is not None
    return None if record.last_used_at is None else record.last_used_at.timestamp()


async def use(kg: Keygate, token: str) -> None:
    resp = await kg.client.get("/x", headers={"X-API-Key": token})
    assert resp.status == 200
    await resp.read()


async def test_usage_last_used_stored_within_flush_interval(keygate: Keygate) -> None:
    token = await keygate.make_key(["default"])
    assert await last_used(keygate.gw.store, token) is None
    before = time.time()
    await use(keygate, token)

    async def stored() -> bool:
        return await last_used(keygate.gw.store, token) is not None

    interval = keygate.settings.auth.last_used_flush_interval
    await wait_for(stored, within=interval + 0.5, what="last_used_at")
    stamp = await last_used(keygate.gw.store, token)
    assert stamp is not None
    assert before - 1 <= stamp <= time.time() + 1


async def test_usage_failed_request_with_bad_key_records_nothing(keygate: Keygate) -> None:
    token = await keygate.make_key(["default"])
    resp = await keygate.client.get("/x", headers={"X-API-Key": token[:-1] + "0"})
    assert resp.status == 401
    assert keygate.gw.usage.pending == 0


async def test_usage_hundred_requests_make_one_write(
    counting_keygate_factory: CountingFactory, upstream: Recorder
) -> None:
    kg, st = await counting_keygate_factory(
        default_route(upstream.url), last_used_flush_interval=30
    )
    token = await kg.make_key(["default"])
    for _ in range(100):
        await use(kg, token)
    usage = kg.gw.usage
    assert usage.pending == 1
    assert st.touch_batches == []  # nothing written on the request path
    flushes = usage.flushes
    await usage.flush()
    assert usage.flushes == flushes + 1
    (batch,) = st.touch_batches
    assert list(batch) == [key_id(token)]
    assert await last_used(st, token) == pytest.approx(batch[key_id(token)], abs=1e-3)
    await usage.flush()  # nothing pending: no write at all
    assert len(st.touch_batches) == 1
    assert usage.flushes == flushes + 1


async def test_usage_two_keys_share_one_batch(
    counting_keygate_factory: CountingFactory, upstream: Recorder
) -> None:
    kg, st = await counting_keygate_factory(
        default_route(upstream.url), last_used_flush_interval=30
    )
    one, two = await kg.make_key(["default"]), await kg.make_key(["default"])
    for _ in range(10):
        await use(kg, one)
        await use(kg, two)
    await kg.gw.usage.flush()
    (batch,) = st.touch_batches
    assert sorted(batch) == sorted([key_id(one), key_id(two)])


async def test_usage_background_flush_writes_each_key_once_per_tick(
    counting_keygate_factory: CountingFactory, upstream: Recorder
) -> None:
    kg, st = await counting_keygate_factory(
        default_route(upstream.url), last_used_flush_interval=0.2
    )
    token = await kg.make_key(["default"])
    started = time.monotonic()
    await asyncio.gather(*(use(kg, token) for _ in range(100)))
    await wait_for(lambda: st.touch_batches, within=1.0, what="a background flush")
    elapsed = time.monotonic() - started
    assert all(list(batch) == [key_id(token)] for batch in st.touch_batches)
    # At most one write per tick (plus the one in progress).
    assert len(st.touch_batches) <= elapsed / 0.2 + 1


async def test_usage_stop_flushes_after_last_request(
    keygate_factory: GatewayFactory, upstream: Recorder
) -> None:
    kg = await keygate_factory(default_route(upstream.url), last_used_flush_interval=30)
    token = await kg.make_key(["default"])
    await use(kg, token)
    await kg.client.close()  # runs cleanup_ctx: the batcher's last flush
    store = open_store(kg.settings.store.url)
    await store.open()
    try:
        assert await last_used(store, token) is not None
    finally:
        await store.close()


async def test_usage_last_used_never_moves_back(store: SQLiteStore) -> None:
    ctx = ServiceContext(store, AuthSettings())
    issued = await create_first_admin(ctx)
    await store.touch_last_used({issued.key.id: 2000.0})
    await store.touch_last_used({issued.key.id: 1000.0})
    assert await last_used(store, issued.token) == 2000.0


class FlakyStore(SQLiteStore):
    """A real store whose first last-used write fails, as during an outage."""

    failures = 1

    async def touch_last_used(  # type: ignore[override]
        self, stamps: dict[str, float], resolution: float = 0.0
    ) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable
        await super().touch_last_used(stamps, resolution)


async def test_usage_failed_flush_is_retried_without_loss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "keygate.usage")  # the store logs outages; this debug
    store = FlakyStore(tmp_path / "flaky.db")
    await store.open()
    try:
        issued = await create_first_admin(ServiceContext(store, AuthSettings()))
        recorder = UsageRecorder(store, 30)
        recorder.touch(issued.key.id)
        await recorder.flush()
        assert recorder.pending == 1
        assert recorder.flushes == 0
        assert await last_used(store, issued.token) is None
        await recorder.flush()
        assert recorder.pending == 0
        assert await last_used(store, issued.token) is not None
    finally:
        await store.close()
    assert "last-used flush failed" in caplog.text


async def test_usage_stop_with_the_store_down_says_the_stamps_are_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing retries after the last flush: "will retry" was untrue.
    store = FlakyStore(tmp_path / "flaky.db")
    store.failures = 1_000
    await store.open()
    try:
        recorder = UsageRecorder(store, 30)
        recorder.start()
        recorder.touch("key-one")
        recorder.touch("key-two")
        await recorder.stop()
    finally:
        await store.close()
    assert recorder.pending == 0
    assert "will retry" not in caplog.text
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1
    assert dropped[0].levelname == "WARNING"
    assert "last-used stamps of 2 keys dropped" in dropped[0].getMessage()


async def test_usage_stop_during_a_flush_returns_and_keeps_the_stamp(store: SQLiteStore) -> None:
    issued = await create_first_admin(ServiceContext(store, AuthSettings()))
    for steps in range(40):
        recorder = UsageRecorder(store, 0.001)
        recorder.start()
        touched = time.time()
        recorder.touch(issued.key.id)
        for _ in range(steps):
            await asyncio.sleep(0)  # stop lands before, inside or after a flush
        async with asyncio.timeout(5):
            await recorder.stop()
        assert recorder.pending == 0
        stamp = await last_used(store, issued.token)
        assert stamp is not None
        assert stamp >= touched - 0.001, steps


# --- a real process ---------------------------------------------------------------
def _cli_missing() -> bool:
    return (
        importlib.util.find_spec("keygate.gateway.cli") is None
        or importlib.util.find_spec("keygate.__main__") is None
    )


@pytest.mark.slow
@pytest.mark.skipif(
    _cli_missing(), reason="the CLI is not installed"
)
async def test_usage_sigterm_flushes_and_exits_0(tmp_path: Path, upstream: Recorder) -> None:
    db = tmp_path / "data" / "keygate.db"
    store = SQLiteStore(db)
    await store.open()
    try:
        ctx = ServiceContext(store, AuthSettings())
        await create_first_admin(ctx)
        admin = await store.get_user("admin")
        assert admin is not None
        actor = Actor(admin.id, admin.username, None, ("admin",), "test")
        token = (await Services.build(ctx).keys.create(actor, {"groups": ["default"]})).token
    finally:
        await store.close()
    port = free_port()
    config = tmp_path / "keygate.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[store]\nurl = "sqlite:///{db}"\n'
        "[auth]\nlast_used_flush_interval = 30\n"
        f'[[routes]]\nname = "default"\nprefix = "/"\nupstream = "{upstream.url}"\n'
    )
    node = await start_node(tmp_path, keygate_env(), "--config", str(config), port=port, within=15)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{node.url}/x", headers={"X-API-Key": token}) as resp,
        ):
            status = resp.status
        code = node.stop(signal.SIGTERM, timeout=15)
    finally:
        if node.proc.poll() is None:
            node.stop(signal.SIGKILL)
    stderr = node.stderr()
    log = stderr[-3000:]
    assert status == 200, log
    assert code == 0, log
    assert token not in stderr
    store = SQLiteStore(db)
    await store.open()
    try:
        assert await last_used(store, token) is not None
    finally:
        await store.close()


# --- auth.last_used_resolution -------------------------------------------------------
async def test_usage_resolution_default_is_60s() -> None:
    assert AuthSettings().last_used_resolution == 60.0


async def test_usage_stamps_within_the_resolution_are_not_written_again(
    tmp_path: Path,
) -> None:
    from tests.support.stores import CountingStore

    store = CountingStore(tmp_path / "r.db")
    await store.open()
    try:
        issued = await create_first_admin(ServiceContext(store, AuthSettings()))
        kid = key_id(issued.token)
        recorder = UsageRecorder(store, 3600.0, resolution=60.0)
        t = time.time()
        recorder.touch(kid, t)
        await recorder.flush()
        recorder.touch(kid, t + 30)  # used again half a resolution later
        await recorder.flush()
        assert recorder.skipped == 1
        recorder.touch(kid, t + 61)
        await recorder.flush()
        assert [list(b.values()) for b in store.touch_batches] == [[t], [t + 61]]
        assert await last_used(store, issued.token) == pytest.approx(t + 61)
    finally:
        await store.close()


async def test_usage_nodes_sharing_a_key_write_its_row_once_per_resolution(
    tmp_path: Path,
) -> None:
    """Ten nodes (recorders on one store) using the same key: each sends its
    stamp, the first one within a resolution is written, the rest leave it."""
    store = SQLiteStore(tmp_path / "n.db")
    await store.open()
    try:
        issued = await create_first_admin(ServiceContext(store, AuthSettings()))
        kid = key_id(issued.token)
        nodes = [UsageRecorder(store, 3600.0, resolution=60.0) for _ in range(10)]
        t = time.time()
        for i, node in enumerate(nodes):
            node.touch(kid, t + i)
            await node.flush()
        assert await last_used(store, issued.token) == pytest.approx(t)
        nodes[3].touch(kid, t + 70)
        await nodes[3].flush()
        assert await last_used(store, issued.token) == pytest.approx(t + 70)
    finally:
        await store.close()


async def test_usage_remembers_a_bounded_number_of_written_stamps(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "m.db")
    await store.open()
    try:
        recorder = UsageRecorder(store, 3600.0, resolution=60.0, memory=10)
        t = time.time()
        for i in range(25):
            recorder.touch(f"nokey{i:07d}", t)
        await recorder.flush()  # no such keys: nothing written, but all remembered...
        assert len(recorder._written) <= 10  # ...within the bound
    finally:
        await store.close()
