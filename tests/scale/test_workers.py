"""Several worker processes on one port: changes reach every worker within 1 s."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from keygate.gateway.store.sqlite.store import SQLiteStore

from .helpers import cli, env_for, start_node, status_fresh

pytestmark = pytest.mark.slow


async def test_workers_cli_disable_reaches_both_workers_within_1s(
    tmp_path: Path, upstream: TestServer
) -> None:
    env = env_for(f"sqlite:///{tmp_path}/kg.db")
    node = await start_node(tmp_path, env, str(upstream.make_url("/")), workers=2)
    try:
        created = cli(env, "keys", "create", "--group", "default", "--json", cwd=tmp_path)
        assert created.returncode == 0, created.stderr
        body = json.loads(created.stdout)
        token, key_id = body["token"], body["key"]["id"]
        probe = f"{node.url}/probe"
        # Warm both workers' caches: fresh connections spread over the workers.
        deadline = time.monotonic() + 15
        while len(node.access_pids()) < 2 and time.monotonic() < deadline:
            assert await status_fresh(probe, token) == 200
        assert len(node.access_pids()) == 2, "both workers must have served the key"

        disabled = cli(env, "keys", "disable", key_id, cwd=tmp_path)
        assert disabled.returncode == 0, disabled.stderr
        acknowledged = time.monotonic()
        # Every probe after 1 s must be refused, whichever worker answers.
        statuses: list[int] = []
        while time.monotonic() - acknowledged < 1.0:
            statuses.append(await status_fresh(probe, token))
        after = [await status_fresh(probe, token) for _ in range(20)]
        assert set(after) == {401}, after
        assert statuses[-1] == 401
    finally:
        assert node.stop() == 0, node.stderr()


async def test_workers_sigterm_drains_flushes_and_exits_zero(
    tmp_path: Path, upstream: TestServer
) -> None:
    db = tmp_path / "kg.db"
    env = env_for(f"sqlite:///{db}", KEYGATE_AUTH_LAST_USED_FLUSH_INTERVAL="30")
    node = await start_node(tmp_path, env, str(upstream.make_url("/")), workers=1)
    created = cli(env, "keys", "create", "--group", "default", "--json", cwd=tmp_path)
    token, key_id = json.loads(created.stdout)["token"], json.loads(created.stdout)["key"]["id"]
    assert await status_fresh(f"{node.url}/x", token) == 200
    # The flush interval is 30 s: only the shutdown flush can have written this.
    assert node.stop(signal.SIGTERM) == 0, node.stderr()
    store = SQLiteStore(db)
    await store.open()
    try:
        key = await store.get_key(key_id)
        assert key is not None and key.last_used_at is not None
    finally:
        await store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def either_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'kg.db'}"


async def test_workers_kill9_during_admin_burst_loses_no_acknowledged_key(
    tmp_path: Path, upstream: TestServer, either_store: str
) -> None:
    import aiohttp
    from keygate.gateway.store import open_store

    url = either_store
    env = env_for(url, KEYGATE_AUTH_MAX_KEYS_PER_USER="100000")
    node = await start_node(tmp_path, env, str(upstream.make_url("/")), workers=1)
    assert node.admin_token is not None
    acknowledged: list[str] = []

    async def burst() -> None:
        headers = {"Authorization": f"Bearer {node.admin_token}"}
        async with aiohttp.ClientSession() as session:
            for i in range(10_000):
                try:
                    async with session.post(
                        f"{node.url}/_keygate/api/v1/keys",
                        json={"groups": ["default"], "name": f"burst-{i}"},
                        headers=headers,
                    ) as resp:
                        if resp.status == 201:
                            acknowledged.append((await resp.json())["key"]["id"])
                except aiohttp.ClientError:
                    return

    task = asyncio.create_task(burst())
    deadline = time.monotonic() + 20
    while len(acknowledged) < 25 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    node.stop(signal.SIGKILL)
    await asyncio.wait_for(task, timeout=20)
    assert len(acknowledged) >= 25
    store = open_store(url)
    await store.open()
    try:
        for key_id in acknowledged:
            assert await store.get_key(key_id) is not None, key_id
    finally:
        await store.close()


async def test_workers_crashed_worker_is_replaced_and_port_keeps_serving(
    tmp_path: Path, upstream: TestServer
) -> None:
    import os

    env = env_for(f"sqlite:///{tmp_path}/kg.db")
    node = await start_node(tmp_path, env, str(upstream.make_url("/")), workers=2)
    try:
        created = cli(env, "keys", "create", "--group", "default", "--json", cwd=tmp_path)
        token = json.loads(created.stdout)["token"]
        children = _children(node.proc.pid)
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while True:
            now = _children(node.proc.pid)
            new = set(now) - set(children)
            if len(now) == 2 and new and f"worker {new.pop()} serving" in node.stderr():
                break
            assert time.monotonic() < deadline, "the crashed worker was not replaced"
            await asyncio.sleep(0.05)
        assert "starting another" in node.stderr()
        statuses = [await status_fresh(f"{node.url}/x", token) for _ in range(10)]
        assert set(statuses) == {200}
    finally:
        assert node.stop() == 0, node.stderr()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]
