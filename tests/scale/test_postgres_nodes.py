"""Several nodes on PostgreSQL; a store outage with fail-static behaviour and recovery.

The outage test starts its own PostgreSQL on a free port (initdb/pg_ctl from the
installed server binaries) and stops it: the machine's shared server is never
touched beyond creating and dropping a database.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from .helpers import Node, env_for, free_port, start_node, status_fresh

pytestmark = pytest.mark.slow

SHARED = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
async def shared_db() -> AsyncIterator[str]:
    name = f"kg_nodes_{uuid.uuid4().hex[:10]}"
    try:
        conn = await asyncpg.connect(SHARED, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    conn = await asyncpg.connect(SHARED, timeout=3)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _admin(node: Node) -> dict[str, str]:
    assert node.admin_token is not None
    return {"Authorization": f"Bearer {node.admin_token}"}


async def _create_key(session: aiohttp.ClientSession, node: Node) -> tuple[str, str]:
    async with session.post(
        f"{node.url}/_keygate/api/v1/keys", json={"groups": ["default"]}, headers=_admin(node)
    ) as resp:
        assert resp.status == 201, await resp.text()
        body = await resp.json()
    return body["token"], body["key"]["id"]


async def test_nodes_api_change_on_one_node_reaches_other_within_1s(
    tmp_path: Path, upstream: TestServer, shared_db: str
) -> None:
    env = env_for(shared_db, KEYGATE_STORE_CHANGE_POLL_INTERVAL="5")  # notices must do it
    a = await start_node(tmp_path, env, str(upstream.make_url("/")), name="a")
    b = await start_node(tmp_path, env, str(upstream.make_url("/")), name="b")
    try:
        async with aiohttp.ClientSession() as session:
            token, key_id = await _create_key(session, a)
            assert await status_fresh(f"{b.url}/x", token) == 200  # cached on b
            async with session.patch(
                f"{a.url}/_keygate/api/v1/keys/{key_id}",
                json={"status": "disabled"},
                headers=_admin(a),
            ) as resp:
                assert resp.status == 200
            acknowledged = time.monotonic()
            while await status_fresh(f"{b.url}/x", token) != 401:
                assert time.monotonic() - acknowledged < 1.0, "node b still accepts the key"
                await asyncio.sleep(0.01)
    finally:
        assert a.stop() == 0, a.stderr()
        assert b.stop() == 0, b.stderr()


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.skip(f"{name} not installed")
    return found[-1]


@pytest.fixture
def private_pg() -> Iterator[tuple[int, list[str], list[str]]]:
    """A PostgreSQL of our own on a free port: (port, start argv, stop argv)."""
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("runuser is needed to run initdb as a non-root user")
    # initdb refuses to run as root, and pytest's tmp_path is private to root:
    # the server's files live in a directory the postgres user can reach.
    tmp_path = Path(tempfile.mkdtemp(prefix="keygate-pg-"))
    tmp_path.chmod(0o755)
    data = tmp_path / "pgdata"
    sockdir = tmp_path / "pgsock"
    for d in (data, sockdir):
        d.mkdir()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        for d in (tmp_path, data, sockdir):
            shutil.chown(d, "postgres")
    subprocess.run(
        [*as_pg, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True, capture_output=True, timeout=120,
    )
    port = free_port()
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={sockdir}"
    ctl = [*as_pg, _pg_bin("pg_ctl"), "-D", str(data), "-l", str(tmp_path / "pg.log")]
    start = [*ctl, "-o", opts, "-w", "start"]
    stop = [*ctl, "-m", "immediate", "-w", "stop"]
    subprocess.run(start, check=True, capture_output=True, timeout=60)
    try:
        yield port, start, stop
    finally:
        subprocess.run(stop, check=False, capture_output=True, timeout=60)
        shutil.rmtree(tmp_path, ignore_errors=True)


async def test_store_outage_cached_keys_pass_uncached_503_and_recovery(
    tmp_path: Path, upstream: TestServer, private_pg: tuple[int, list[str], list[str]]
) -> None:
    port, start, stop = private_pg
    env = env_for(f"postgresql://postgres@127.0.0.1:{port}/postgres")
    node = await start_node(tmp_path, env, str(upstream.make_url("/")))
    try:
        async with aiohttp.ClientSession() as session:
            cached, cached_id = await _create_key(session, node)
            uncached, _ = await _create_key(session, node)
            assert await status_fresh(f"{node.url}/x", cached) == 200

            await asyncio.to_thread(subprocess.run, stop, check=True, capture_output=True)
            # Fail-static: the cached key keeps working; nothing else can be answered.
            assert await status_fresh(f"{node.url}/x", cached) == 200
            async with session.get(
                f"{node.url}/x", headers={"Authorization": f"Bearer {uncached}"}
            ) as resp:
                assert resp.status == 503
                assert (await resp.json())["error"]["code"] == "store_unavailable"
            async with session.post(
                f"{node.url}/_keygate/api/v1/keys", json={"groups": ["default"]},
                headers=_admin(node),
            ) as resp:
                assert resp.status == 503
            async with session.get(f"{node.url}/_keygate/ready") as resp:
                assert resp.status == 503

            await asyncio.to_thread(subprocess.run, start, check=True, capture_output=True)
            deadline = time.monotonic() + 20
            while await status_fresh(f"{node.url}/x", uncached) != 200:
                assert time.monotonic() < deadline, "no recovery without restart"
                await asyncio.sleep(0.1)
            async with session.get(f"{node.url}/_keygate/ready") as resp:
                assert resp.status == 200
            # The last-used batch that failed during the outage is retried.
            while True:
                async with session.get(
                    f"{node.url}/_keygate/api/v1/keys/{cached_id}", headers=_admin(node)
                ) as resp:
                    if (await resp.json())["last_used_at"] is not None:
                        break
                assert time.monotonic() < deadline, "last-used batch was lost"
                await asyncio.sleep(0.1)
    finally:
        assert node.stop(signal.SIGTERM) == 0, node.stderr()
