"""Wake-ups between the processes sharing a SQLite store: NOTIFY without a server.

Each gateway process listening for changes binds a Unix datagram socket in a
directory beside the database (``<db>-wake/``, mode 0700). A process that
commits a write carrying change notices (a worker's admin API, the CLI) then
sends one byte to every socket there, and each listener polls the change feed
at once instead of at its next ``store.change_poll_interval`` tick: another
worker applies a change within milliseconds, and an idle worker spends no
CPU on it (the poll stays, as the fallback for a wake-up that is lost).

Best effort by design: a socket nobody reads any more (its process died) is
removed by the next sender; a full buffer means a wake-up is pending already;
a directory this process may not write (another user's CLI) or a path too long
for a socket address leaves the poll alone to do the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("keygate.store")

SUFFIX = ".sock"


def wake_dir(db: Path) -> Path:
    return db.with_name(db.name + "-wake")


def notify(directory: Path, own: Path | None = None) -> int:
    """One byte to every listener in ``directory`` but ``own``; how many were sent."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    sent = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for entry in entries:
            if not entry.name.endswith(SUFFIX) or (own is not None and entry.path == str(own)):
                continue
            try:
                sock.sendto(b"!", entry.path)
                sent += 1
            except (ConnectionRefusedError, FileNotFoundError):
                # Nobody reads it: its process is gone.
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            except BlockingIOError:
                pass  # its buffer is full: a wake-up is waiting there already
            except OSError as exc:  # permissions, a path too long for an address
                log.debug("no wake-up for %s: %s", entry.name, exc)
    return sent


class WakeListener:
    """This process's socket in the wake directory; calls ``on_wake`` (coalesced:
    one call at a time, and once more if woken meanwhile)."""

    def __init__(self, db: Path, on_wake: Callable[[], Awaitable[Any]]) -> None:
        self._dir = wake_dir(db)
        self._on_wake = on_wake
        self._sock: socket.socket | None = None
        self.path: Path | None = None
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.wakes = 0  # tests count them

    async def start(self) -> None:
        path = self._dir / f"{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._dir.mkdir(mode=0o700, exist_ok=True)
            sock.setblocking(False)
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            log.debug("no wake-ups for this process (%s): the change poll alone", exc)
            return
        self._sock, self.path = sock, path
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def delivers_all(self) -> bool:
        """Best effort (a process may not be able to write here): never."""
        return False

    async def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while sock.recv(64):
                pass
        self.wakes += 1
        task = self._task
        if task is None or task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        else:
            self._again = True

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self._on_wake()
            except Exception as exc:  # the poll loop will try again; the store logs outages
                log.debug("change poll after a wake-up failed: %s", type(exc).__name__)
            if not self._again:
                return
