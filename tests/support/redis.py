"""Redis for the rate-limit tests.

- :func:`redis_prefix` — a key prefix of one's own on the shared Redis at
  127.0.0.1:6379 (never flushed or reconfigured: only the test's keys are
  deleted afterwards, by :func:`drop_prefix`).
- :class:`PrivateRedis` — a ``redis-server`` of the test's own on a free port,
  without persistence, that the test may kill and start again on the same port.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.support.polling import wait_for
from tests.support.raw import free_port

SHARED_URL = "redis://127.0.0.1:6379/0"
REDIS_SERVER = shutil.which("redis-server")


def redis_prefix() -> str:
    return f"kgtest-{uuid.uuid4().hex[:12]}"


async def drop_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def shared_redis_answers() -> bool:
    client = aioredis.Redis.from_url(SHARED_URL, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    except (aioredis.ConnectionError, OSError):
        return False
    finally:
        await client.aclose()


@dataclass
class PrivateRedis:
    """A redis-server on 127.0.0.1:``port``; ``start`` again after ``kill``."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> PrivateRedis:
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        async def answers() -> bool:
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=0.5)
            try:
                return bool(await client.ping())
            except (aioredis.ConnectionError, OSError):
                return False
            finally:
                await client.aclose()

        await wait_for(answers, within=10, every=0.05, what="the private redis-server")
        return self

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
