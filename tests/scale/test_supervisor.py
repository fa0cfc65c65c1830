"""The supervisor of several workers (issue 16): it never gives up on healthy
workers — a worker that keeps dying is restarted with exponential back-off,
the others untouched — and only workers that cannot start at all end it, with
their reason."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keygate.gateway.cli.supervisor import BACKOFF_FIRST, BACKOFF_MAX, backoff
from tests.support.polling import wait_for
from tests.support.processes import children, node_env, run_keygate, serve_node, status_fresh
from tests.support.raw import free_port
from tests.support.upstreams import Recorder


def test_supervisor_backoff_doubles_up_to_30s() -> None:
    delays = [backoff(n) for n in range(1, 14)]
    assert delays[0] == BACKOFF_FIRST
    assert all(b == min(2 * a, BACKOFF_MAX) for a, b in itertools.pairwise(delays))
    assert max(delays) == BACKOFF_MAX == 30.0


@pytest.mark.slow
async def test_supervisor_killing_the_newest_worker_repeatedly_never_stops_the_healthy_one(
    tmp_path: Path, upstream: Recorder
) -> None:
    env = node_env(f"sqlite:///{tmp_path}/kg.db")
    node = await serve_node(tmp_path, env, upstream.url, workers=2)
    try:
        created = run_keygate(
            "keys", "create", "--group", "default", "--json", env=env, cwd=tmp_path
        )
        token = json.loads(created.stdout)["token"]
        workers = children(node.proc.pid)
        assert len(workers) == 2
        healthy = workers[0]
        # Each time, the newest worker is killed once it serves: 7 deaths in a
        # row, each a few seconds after its start (the old supervisor stopped
        # everything and exited 1 after 5 such "crash loop" deaths).
        for kill in range(7):
            newest = max(children(node.proc.pid))
            assert newest != healthy
            os.kill(newest, signal.SIGKILL)

            def replaced(dead: int = newest) -> bool:
                assert node.proc.poll() is None, node.stderr()
                now = children(node.proc.pid)
                return (
                    len(now) == 2
                    and dead not in now
                    and f"worker {max(now)} serving" in node.stderr()
                )

            await wait_for(replaced, within=15, every=0.05, what=f"replacement {kill + 1}")
            assert healthy in children(node.proc.pid)
            assert await status_fresh(f"{node.url}/x", token) == 200
        delays = [float(d) for d in re.findall(r"starting another in ([\d.]+) s", node.stderr())]
        assert len(delays) == 7
        assert delays == sorted(delays) and delays[-1] > delays[0]  # backing off
        assert "giving up" not in node.stderr()
    finally:
        assert node.stop() == 0, node.stderr()


@pytest.mark.slow
def test_supervisor_workers_that_cannot_start_end_the_parent_with_the_reason(
    tmp_path: Path,
) -> None:
    # The store opens in the parent, then every worker fails reading the keys.
    db = tmp_path / "k.db"
    env = node_env(f"sqlite:///{db}")
    assert run_keygate("init", env=env, cwd=tmp_path).returncode == 0
    conn = sqlite3.connect(db)
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'keys'").fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    with db.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "keygate", "serve", "--upstream", "http://127.0.0.1:9",
         "--workers", "2", "--listen", f"127.0.0.1:{free_port()}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
    )
    assert time.monotonic() - started < 5
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("keygate: a worker could not start")
    assert str(db) in lines[0] and "malformed" in lines[0]
