"""Several nodes on PostgreSQL; a store outage with fail-static behaviour and recovery.

The outage test starts its own PostgreSQL on a free port (initdb/pg_ctl from the
installed server binaries) and stops it: the machine's shared server is never
touched beyond creating and dropping a database.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.pg import NO_SERVER, PG_SERVER, create_database, drop_database
from tests.support.polling import wait_for
from tests.support.processes import Node, node_env, serve_node, status_fresh
from tests.support.raw import free_port
from tests.support.upstreams import Recorder

pytestmark = pytest.mark.slow


@pytest.fixture
async def shared_db() -> AsyncIterator[str]:
    """A database of the shared server for the nodes of one test."""
    try:
        url = await create_database("kg_nodes")
    except NO_SERVER as exc:
        pytest.skip(f"no PostgreSQL server answers at {PG_SERVER}: {type(exc).__name__}")
    yield url
    await drop_database(url)


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
    tmp_path: Path, upstream: Recorder, shared_db: str
) -> None:
    env = node_env(shared_db, KEYGATE_STORE_CHANGE_POLL_INTERVAL="5")  # notices must do it
    a = await serve_node(tmp_path, env, upstream.url, name="a")
    b = await serve_node(tmp_path, env, upstream.url, name="b")
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

            async def refused() -> bool:
                return await status_fresh(f"{b.url}/x", token) == 401

            # Within 1 s of the acknowledgement, whatever the wait started.
            within = 1.0 - (time.monotonic() - acknowledged)
            await wait_for(refused, within=within, what="node b to refuse the key")
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
    tmp_path: Path, upstream: Recorder, private_pg: tuple[int, list[str], list[str]]
) -> None:
    port, start, stop = private_pg
    env = node_env(f"postgresql://postgres@127.0.0.1:{port}/postgres")
    node = await serve_node(tmp_path, env, upstream.url)
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
            started = time.monotonic()

            async def recovered() -> bool:
                return await status_fresh(f"{node.url}/x", uncached) == 200

            await wait_for(recovered, within=20, every=0.1, what="recovery without restart")
            async with session.get(f"{node.url}/_keygate/ready") as resp:
                assert resp.status == 200

            # The last-used batch that failed during the outage is retried.
            async def stamped() -> bool:
                async with session.get(
                    f"{node.url}/_keygate/api/v1/keys/{cached_id}", headers=_admin(node)
                ) as resp:
                    return (await resp.json())["last_used_at"] is not None

            within = 20 - (time.monotonic() - started)  # one deadline for both, as before
            await wait_for(stamped, within=within, every=0.1, what="the lost last-used batch")
    finally:
        assert node.stop(signal.SIGTERM) == 0, node.stderr()


async def test_store_outage_stale_keys_work_logged_once_and_stamps_dropped_at_stop(
    tmp_path: Path, upstream: Recorder, private_pg: tuple[int, list[str], list[str]]
) -> None:
    # Issue 16: cached keys past cache_ttl keep working while PostgreSQL is down
    # (auth.stale_if_error); the outage is one line when it starts and one when
    # it ends, with no traceback (asyncpg's pool logged one every few seconds);
    # a stop during an outage says the last-used stamps were dropped.
    port, start, stop = private_pg
    env = node_env(
        f"postgresql://postgres@127.0.0.1:{port}/postgres",
        KEYGATE_AUTH_CACHE_TTL="1",
        KEYGATE_AUTH_STALE_IF_ERROR="30",
    )
    node = await serve_node(tmp_path, env, upstream.url)
    stopped = False
    try:
        async with aiohttp.ClientSession() as session:
            cached, _ = await _create_key(session, node)
            uncached, _ = await _create_key(session, node)
            assert await status_fresh(f"{node.url}/x", cached) == 200

            await asyncio.to_thread(subprocess.run, stop, check=True, capture_output=True)
            await asyncio.sleep(1.5)  # past cache_ttl
            assert await status_fresh(f"{node.url}/x", cached) == 200
            assert await status_fresh(f"{node.url}/x", uncached) == 503
            async with session.get(f"{node.url}/_keygate/ready") as resp:
                assert resp.status == 503
                body = await resp.json()
                assert body["checks"]["store"]["status"] == "unavailable"
            await asyncio.sleep(5)  # asyncpg retries its pool floor meanwhile
            assert await status_fresh(f"{node.url}/x", cached) == 200

            await asyncio.to_thread(subprocess.run, start, check=True, capture_output=True)

            async def recovered() -> bool:
                return await status_fresh(f"{node.url}/x", uncached) == 200

            await wait_for(recovered, within=20, every=0.1, what="recovery without restart")
            await wait_for(
                lambda: "answers again" in node.stderr(), within=5, what="the recovery line"
            )

            # Down again, a request to stamp, and a stop: nothing retries after it.
            await asyncio.to_thread(subprocess.run, stop, check=True, capture_output=True)
            stopped = True
            assert await status_fresh(f"{node.url}/x", cached) == 200
    finally:
        code = node.stop(signal.SIGTERM)
        if not stopped:
            assert code == 0, node.stderr()
    log = node.stderr()
    assert "Traceback" not in log
    assert "Failed to restore the pool connection floor" not in log
    assert "will retry" not in log
    assert log.count(" unreachable (") == 2, log  # two outages, a line each
    first_back = [line for line in log.splitlines() if "answers again" in line]
    assert len(first_back) == 1 and "requests were let through" in first_back[0], log
    assert re.search(r"last-used stamps of \d+ keys? dropped", log), log
