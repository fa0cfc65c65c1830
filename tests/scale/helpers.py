"""Real ``keygate serve`` processes for multi-process tests."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
TOKEN_RE = re.compile(r"kg_[0-9a-z]{12}_[0-9A-Za-z]{38}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(store_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["KEYGATE_STORE_URL"] = store_url
    env["KEYGATE_STORE_CHANGE_POLL_INTERVAL"] = "0.1"
    env["KEYGATE_AUTH_LAST_USED_FLUSH_INTERVAL"] = "0.2"
    env.update(extra)
    return env


def cli(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keygate", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class Node:
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
        return {
            int(m.group(1))
            for m in re.finditer(r"keygate\.access pid=(\d+) ", self.stderr())
        }

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


async def start_node(
    tmp: Path, env: dict[str, str], upstream: str, *, workers: int = 1, name: str = "node"
) -> Node:
    port = free_port()
    stderr_path = tmp / f"{name}.stderr"
    err = stderr_path.open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "keygate", "serve", "--upstream", upstream,
            "--listen", f"127.0.0.1:{port}", "--workers", str(workers),
        ],
        env=env,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=err,
        text=True,
    )
    err.close()
    node = Node(proc, port, stderr_path)
    deadline = time.monotonic() + 20
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"keygate exited early: {node.stderr()}")
            try:
                async with session.get(f"{node.url}/_keygate/health") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        else:
            node.stop(signal.SIGKILL)
            raise RuntimeError(f"keygate did not start: {node.stderr()}")
    match = TOKEN_RE.search(node.stderr())
    node.admin_token = match.group(0) if match else None
    return node


async def status_fresh(url: str, token: str) -> int:
    """One request on a new connection, so SO_REUSEPORT may pick any worker."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        await resp.read()
        return resp.status
