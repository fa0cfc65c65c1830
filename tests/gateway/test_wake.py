"""Wake-ups between processes sharing a SQLite store (gateway/store/sqlite/wake.py):
a commit with change notices wakes every listener at once; the change poll is
only the fallback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from keygate.config.settings import AuthSettings
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.service.bootstrap import create_first_admin
from keygate.gateway.store.sqlite.store import SQLiteStore
from keygate.gateway.store.sqlite.wake import WakeListener, notify, wake_dir
from tests.support.gateway import default_route, key_id, make_settings, start_keygate
from tests.support.polling import wait_for
from tests.support.upstreams import Recorder


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """Another process's connection to the store."""
    store = SQLiteStore(tmp_path / "k.db", loop_reads=False)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_a_commit_with_notices_wakes_listeners_and_others_do_not(
    writer: SQLiteStore, tmp_path: Path
) -> None:
    woken: list[int] = []

    async def on_wake() -> None:
        woken.append(1)

    listener = WakeListener(tmp_path / "k.db", on_wake)
    await listener.start()
    try:
        assert listener.path is not None and listener.path.parent == wake_dir(tmp_path / "k.db")
        issued = await create_first_admin(ServiceContext(writer, AuthSettings()))
        await wait_for(lambda: woken, within=2.0, what="a wake-up after the first admin")
        before = listener.wakes
        # A last-used flush writes no notice: nobody needs waking.
        await writer.touch_last_used({issued.key.owner_id: 1.0})
        await writer.touch_last_used({key_id(issued.token): 5.0})
        await asyncio.sleep(0)  # a datagram sent would be readable by now (same host)
        await asyncio.sleep(0.05)
        assert listener.wakes == before
    finally:
        await listener.stop()
    assert listener.path is not None and not listener.path.exists()


async def test_a_socket_nobody_reads_is_removed_by_the_next_sender(tmp_path: Path) -> None:
    directory = wake_dir(tmp_path / "k.db")
    directory.mkdir()
    dead = directory / "1-dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(dead))
    sock.close()  # its process is gone; the file stays
    assert dead.exists()
    assert notify(directory) == 0
    assert not dead.exists()


async def test_gateway_applies_another_process_change_without_waiting_for_the_poll(
    tmp_path: Path,
    writer: SQLiteStore,
    upstream: Recorder,
    aiohttp_client: Callable[[TestServer], Awaitable[TestClient]],
) -> None:
    settings = make_settings(tmp_path, default_route(upstream.url))
    # A poll far slower than the wait below: only a wake-up can deliver the change.
    settings = settings.__class__(
        server=settings.server,
        store=settings.store.__class__(url=f"sqlite:///{tmp_path}/k.db", change_poll_interval=60.0),
        auth=settings.auth,
        ratelimit=settings.ratelimit,
        routes=settings.routes,
    )
    kg = await start_keygate(settings, aiohttp_client)
    token = await kg.make_key(["default"])

    async def status() -> int:
        async with kg.client.get("/x", headers=kg.bearer(token)) as resp:
            return resp.status

    await wait_for(lambda: _is(status(), 200), within=2.0, what="the new key admitted")
    user = await writer.get_user("admin")
    assert user is not None
    actor = Actor(user.id, user.username, None, ("admin",), "test")
    await Services.build(ServiceContext(writer, settings.auth)).keys.revoke(actor, key_id(token))
    await wait_for(lambda: _is(status(), 401), within=2.0, what="the revoke applied")


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected
