"""Real ``keygate`` processes, as a user or an operator runs them.

- :func:`keygate_env` is the environment for one: this checkout importable,
  no ``KEYGATE_*`` variable of the test run leaking in, the settings given.
- :func:`run_keygate` runs a command to completion (``keygate keys create …``);
  :func:`cli_runner` does so on one SQLite file and checks what a failing
  command shows (never a traceback, a token or stdout); :func:`ok_json` runs
  one with ``--json`` and reads its answer.
- :func:`start_node` starts ``keygate serve`` and waits until it answers its
  health check: a :class:`Node` to probe, read the stderr of and stop.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.support.polling import wait_for
from tests.support.raw import free_port

REPO = Path(__file__).resolve().parents[2]
TOKEN_RE = re.compile(r"kg_[0-9a-z]{12}_[0-9A-Za-z]{38}")


def keygate_env(**settings: str) -> dict[str, str]:
    """This process's environment without ``KEYGATE_*``, keygate importable, plus ``settings``
    (``KEYGATE_STORE_URL=…`` and the like, or any other variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(settings)
    return env


def node_env(store_url: str, **settings: str) -> dict[str, str]:
    """:func:`keygate_env` for a node on ``store_url`` that notices changes and flushes
    last-used stamps quickly."""
    defaults = {
        "KEYGATE_STORE_CHANGE_POLL_INTERVAL": "0.1",
        "KEYGATE_AUTH_LAST_USED_FLUSH_INTERVAL": "0.2",
    }
    return keygate_env(**{**defaults, **settings, "KEYGATE_STORE_URL": store_url})


def run_keygate(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m keygate *args`` to completion, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "keygate", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


Run = Callable[..., subprocess.CompletedProcess[str]]


def cli_runner(directory: Path) -> Run:
    """``keygate *args`` run in ``directory`` on its own SQLite store, checked."""
    env = keygate_env(KEYGATE_STORE_URL=f"sqlite:///{directory}/k.db")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = run_keygate(*args, env=env, cwd=directory)
        assert "Traceback" not in proc.stderr, proc.stderr
        if proc.returncode != 0:
            assert not TOKEN_RE.search(proc.stderr), "a token reached stderr"
            assert proc.stdout == "", "a failing command printed on stdout"
        return proc

    return run


def ok_json(run: Run, *args: str) -> Any:
    proc = run(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)  # exactly one document, or this raises


@dataclass
class Node:
    """A running ``keygate serve``; its stderr goes to a file."""

    proc: subprocess.Popen[str]
    port: int
    stderr_path: Path
    admin_token: str | None = None
    pids: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def access_pids(self) -> set[int]:
        """The processes that have written an access line (workers that served)."""
        return {
            int(m.group(1)) for m in re.finditer(r"keygate\.access pid=(\d+) ", self.stderr())
        }

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig`` (unless it has exited) and wait; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


async def start_node(
    cwd: Path,
    env: dict[str, str],
    *args: str,
    port: int | None = None,
    name: str = "node",
    within: float = 20.0,
) -> Node:
    """``keygate serve *args`` in ``cwd``, listening on ``port`` (a free one, passed as
    ``--listen``, unless given: then ``args`` say where); returns once it is healthy.
    The admin token it printed on a first start is kept."""
    if port is None:
        port = free_port()
        args = (*args, "--listen", f"127.0.0.1:{port}")
    stderr_path = cwd / f"{name}.stderr"
    with stderr_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keygate", "serve", *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )
    node = Node(proc, port, stderr_path)
    try:
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"keygate exited early: {node.stderr()}")
                try:
                    async with session.get(f"{node.url}/_keygate/health") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(healthy, within=within, every=0.05, what=f"{name} to be healthy")
    except AssertionError:
        node.stop(signal.SIGKILL)
        raise RuntimeError(f"keygate did not start: {node.stderr()}") from None
    match = TOKEN_RE.search(node.stderr())
    node.admin_token = match.group(0) if match else None
    return node


async def serve_node(
    cwd: Path, env: dict[str, str], upstream: str, *, workers: int = 1, name: str = "node"
) -> Node:
    """:func:`start_node` with ``--upstream`` and ``--workers``."""
    return await start_node(
        cwd, env, "--upstream", upstream, "--workers", str(workers), name=name
    )


async def status_fresh(url: str, token: str) -> int:
    """One request on a new connection, so SO_REUSEPORT may pick any worker."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        await resp.read()
        return resp.status


def children(pid: int) -> list[int]:
    """The pids of a process's children (a supervisor's workers), oldest pid first."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return sorted(int(p) for p in path.read_text().split())
