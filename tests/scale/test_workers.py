"""Several worker processes on one port: changes reach every worker within 1 s."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from keygate.gateway.store.sqlite.store import SQLiteStore
from tests.support.polling import wait_for
from tests.support.processes import children, node_env, run_keygate, serve_node, status_fresh
from tests.support.upstreams import Recorder

pytestmark = pytest.mark.slow


async def test_workers_cli_disable_reaches_both_workers_within_1s(
    tmp_path: Path, upstream: Recorder
) -> None:
    env = node_env(f"sqlite:///{tmp_path}/kg.db")
    node = await serve_node(tmp_path, env, upstream.url, workers=2)
    try:
        created = run_keygate(
            "keys", "create", "--group", "default", "--json", env=env, cwd=tmp_path
        )
        assert created.returncode == 0, created.stderr
        body = json.loads(created.stdout)
        token, key_id = body["token"], body["key"]["id"]
        probe = f"{node.url}/probe"
        # Warm both workers' caches: fresh connections spread over the workers.
        async def both_served() -> bool:
            assert await status_fresh(probe, token) == 200
            return len(node.access_pids()) >= 2

        await wait_for(both_served, within=15, every=0, what="both workers serving")
        assert len(node.access_pids()) == 2, "both workers must have served the key"

        disabled = run_keygate("keys", "disable", key_id, env=env, cwd=tmp_path)
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
    tmp_path: Path, upstream: Recorder
) -> None:
    db = tmp_path / "kg.db"
    env = node_env(f"sqlite:///{db}", KEYGATE_AUTH_LAST_USED_FLUSH_INTERVAL="30")
    node = await serve_node(tmp_path, env, upstream.url, workers=1)
    created = run_keygate("keys", "create", "--group", "default", "--json", env=env, cwd=tmp_path)
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


async def test_workers_kill9_during_admin_burst_loses_no_acknowledged_key(
    tmp_path: Path, upstream: Recorder, either_store: str
) -> None:
    import aiohttp

    from keygate.gateway.store import open_store

    url = either_store
    env = node_env(url, KEYGATE_AUTH_MAX_KEYS_PER_USER="100000")
    node = await serve_node(tmp_path, env, upstream.url, workers=1)
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
    try:
        await wait_for(
            lambda: len(acknowledged) >= 25 or task.done(), within=20, what="25 keys acknowledged"
        )
    finally:
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
    tmp_path: Path, upstream: Recorder
) -> None:
    import os

    env = node_env(f"sqlite:///{tmp_path}/kg.db")
    node = await serve_node(tmp_path, env, upstream.url, workers=2)
    try:
        created = run_keygate(
            "keys", "create", "--group", "default", "--json", env=env, cwd=tmp_path
        )
        token = json.loads(created.stdout)["token"]
        workers = children(node.proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)

        def replaced() -> bool:
            now = children(node.proc.pid)
            new = set(now) - set(workers)
            return len(now) == 2 and bool(new) and f"worker {new.pop()} serving" in node.stderr()

        await wait_for(replaced, within=15, every=0.05, what="the crashed worker replaced")
        assert "starting another" in node.stderr()
        statuses = [await status_fresh(f"{node.url}/x", token) for _ in range(10)]
        assert set(statuses) == {200}
    finally:
        assert node.stop() == 0, node.stderr()
