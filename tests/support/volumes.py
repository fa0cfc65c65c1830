"""Small volumes a test mounts itself: a 2 MiB tmpfs to fill, or one made read-only.

Tests run as root here, so ``mount -t tmpfs`` works; where it does not (no
privilege, no ``mount``), :func:`tiny_volume` skips the test and says why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def tiny_volume(where: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (created), unmounted at the end."""
    if shutil.which("mount") is None:
        pytest.skip("cannot mount a small volume: no mount command")
    where.mkdir(parents=True, exist_ok=True)
    done = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        # Lazy: a connection a failing test left open must not fail the unmount.
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def make_read_only(where: Path) -> None:
    done = _mount("-o", "remount,ro", str(where))
    if done.returncode != 0:
        pytest.skip(f"cannot remount {where} read-only: {done.stderr.strip()}")


def fill(volume: Path, name: str = "filler") -> Path:
    """Write a file on ``volume`` until no byte more fits; its path."""
    path = volume / name
    chunk = b"\0" * 4096
    with path.open("ab", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        # Whatever single bytes are left too.
        with contextlib.suppress(OSError):
            while f.write(b"\0"):
                pass
    return path


def free_bytes(volume: Path) -> int:
    st = os.statvfs(volume)
    return st.f_bavail * st.f_frsize
