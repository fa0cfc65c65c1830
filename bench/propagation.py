"""Propagation benchmark: time from an acknowledged disable until every worker or node refuses.

    python bench/propagation.py [--changes 60] [--skip-postgres]

Two set-ups, each started here on 127.0.0.1 free ports and stopped by pid:
- ``sqlite-2-workers``: one ``keygate serve --workers 2`` on a SQLite file. The
  workers share a port (SO_REUSEPORT), so a worker cannot be addressed: a change
  counts as propagated at the first of 10 consecutive refusals on fresh
  connections (each may land on either worker).
- ``postgres-2-nodes``: two single-worker nodes sharing a fresh database on the
  PostgreSQL at 127.0.0.1:5432; the disable goes through node A's API, and each
  node is probed directly until it refuses.

Prints a markdown table of p50 / p99 / max in milliseconds, how many times a
key just created was refused by a worker or node that had not yet applied its
creation (each is retried until admitted), and each set-up's
CPU while idle (``--idle`` seconds before the changes, no traffic: the cost of
watching the change feed), in milliseconds of CPU per second, over the whole
process tree (supervisor and workers).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import cpu_seconds  # noqa: E402

TOKEN_RE = re.compile(r"kg_[0-9a-z]{12}_[0-9A-Za-z]{38}")
CONSECUTIVE = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def origin() -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", lambda r: web.Response(text="ok"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


Node = tuple[subprocess.Popen[bytes], str, str]


async def start(store_url: str, upstream: str, workers: int, tmp: Path) -> Node:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), KEYGATE_STORE_URL=store_url,
               KEYGATE_LOG_LEVEL="WARNING", KEYGATE_AUTH_MAX_KEYS_PER_USER="100000")
    err = tmp / f"keygate-{port}.err"
    with err.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keygate", "serve", "--upstream", upstream,
             "--listen", f"127.0.0.1:{port}", "--workers", str(workers)],
            env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=fh,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{url}/_keygate/health") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit(f"keygate did not start:\n{err.read_text()}")
            await asyncio.sleep(0.05)
    match = TOKEN_RE.search(err.read_text())
    return proc, url, match.group(0) if match else ""


async def fresh_status(url: str, token: str) -> int:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.get(f"{url}/probe", headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return resp.status


async def refused_at(url: str, token: str, *, consecutive: int) -> float:
    """Monotonic time of the first of ``consecutive`` refusals in a row."""
    first = None
    run = 0
    deadline = time.monotonic() + 30
    while run < consecutive:
        status = await fresh_status(url, token)
        now = time.monotonic()
        if status == 401:
            first = now if run == 0 else first
            run += 1
        else:
            run = 0
        if now > deadline:
            raise SystemExit("a change never propagated within 30 s")
    assert first is not None
    return first


async def admitted(url: str, token: str) -> int:
    """Wait until ``token`` is admitted at ``url``; how many refusals came first.

    A worker that has not yet applied the key's creation notice may refuse a
    key created a moment ago elsewhere (docs/reference.md, the change feed):
    counted and reported, not a failure of the run."""
    refusals = 0
    deadline = time.monotonic() + 5
    while (status := await fresh_status(url, token)) != 200:
        if status != 401 or time.monotonic() > deadline:
            raise SystemExit(f"a new key was answered {status}")
        refusals += 1
    return refusals


fresh_refusals = [0]


async def measure(admin_url: str, admin_token: str, probe_urls: list[str], changes: int,
                  consecutive: int) -> list[float]:
    headers = {"Authorization": f"Bearer {admin_token}"}
    samples = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for i in range(changes):
            async with session.post(f"{admin_url}/_keygate/api/v1/keys",
                                    json={"groups": ["default"], "name": f"p-{i}"}) as resp:
                body = await resp.json()
            token, key_id = body["token"], body["key"]["id"]
            for url in probe_urls:  # warm every worker/node cache
                for _ in range(4):
                    fresh_refusals[0] += await admitted(url, token)
            async with session.patch(f"{admin_url}/_keygate/api/v1/keys/{key_id}",
                                     json={"status": "disabled"}) as resp:
                assert resp.status == 200
            acknowledged = time.monotonic()
            done = await asyncio.gather(
                *(refused_at(u, token, consecutive=consecutive) for u in probe_urls)
            )
            samples.append((max(done) - acknowledged) * 1000.0)
    return samples


async def idle_cpu(procs: list[subprocess.Popen[bytes]], seconds: float) -> float:
    """Milliseconds of CPU a second that ``procs`` (and their children) use with no traffic."""
    if seconds <= 0:
        return float("nan")
    await asyncio.sleep(1.0)  # start-up's own work done
    before = sum(cpu_seconds(p.pid) for p in procs)
    await asyncio.sleep(seconds)
    return (sum(cpu_seconds(p.pid) for p in procs) - before) / seconds * 1000.0


def row(name: str, samples: list[float], idle: float) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    refused, fresh_refusals[0] = fresh_refusals[0], 0
    return (f"| {name} | {len(samples)} | {statistics.median(samples):.0f} | {p99:.0f} "
            f"| {max(samples):.0f} | {idle:.1f} | {refused} |")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=60)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--idle", type=float, default=20.0,
                        help="seconds of idle CPU measured per set-up (0: none)")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    runner, upstream = await origin()
    rows = []
    procs: list[subprocess.Popen[bytes]] = []
    db_name = f"kg_prop_{uuid.uuid4().hex[:8]}"
    try:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            proc, url, token = await start(f"sqlite:///{tmp}/kg.db", upstream, 2, tmp)
            procs.append(proc)
            idle = await idle_cpu([proc], args.idle)
            samples = await measure(url, token, [url], args.changes, CONSECUTIVE)
            rows.append(row("SQLite, 2 workers", samples, idle))
            if not args.skip_postgres:
                import asyncpg

                conn = await asyncpg.connect(args.pg)
                await conn.execute(f'CREATE DATABASE "{db_name}"')
                await conn.close()
                pg_url = args.pg.rsplit("/", 1)[0] + f"/{db_name}"
                a, url_a, token_a = await start(pg_url, upstream, 1, tmp)
                b, url_b, _ = await start(pg_url, upstream, 1, tmp)
                procs += [a, b]
                idle = await idle_cpu([a, b], args.idle)
                samples = await measure(url_a, token_a, [url_a, url_b], args.changes, 1)
                rows.append(row("PostgreSQL, 2 nodes", samples, idle))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
        await runner.cleanup()
        if not args.skip_postgres:
            import asyncpg

            conn = await asyncpg.connect(args.pg)
            await conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            await conn.close()
    print("| set-up | changes | p50 ms | p99 ms | max ms | idle CPU ms/s | new keys refused |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    asyncio.run(main())
