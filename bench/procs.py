"""Processes the bench starts: spawn pinned, wait until ready, measure, stop by pid.

Every server runs in its own session (``start_new_session``), so its process
group id is its pid: stopping signals exactly that group (nginx master and
workers, keygate supervisor and workers) and nothing else. CPU time and memory
are read from ``/proc`` and summed over the process and all its descendants.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_sets(sut_cpu: int, load_cpu: int) -> tuple[set[int] | None, set[int] | None]:
    """(system under test, load generator) CPU sets; None when pinning is impossible."""
    available = os.sched_getaffinity(0)
    if sut_cpu in available and load_cpu in available and sut_cpu != load_cpu:
        return {sut_cpu}, {load_cpu}
    return None, None


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)
    ready_after: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    cpus: set[int] | None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Proc:
    """Start ``argv`` pinned to ``cpus`` (inherited by every child it forks)."""

    def pin() -> None:  # runs in the child before exec, so forks inherit it
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    out = log.open("wb")
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=pin,
        )
    finally:
        out.close()
    return Proc(name, popen, log)


def wait_http(proc: Proc, port: int, path: str, timeout: float, *, tls: bool = False) -> float:
    """Poll ``GET path`` until any HTTP answer (bounded); return seconds since spawn.
    ``tls``: over HTTPS (the bench's own certificate, not verified)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        conn = (
            http.client.HTTPSConnection(
                "127.0.0.1", port, timeout=2, context=ssl._create_unverified_context()
            )
            if tls
            else http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        )
        try:
            conn.request("GET", path)
            conn.getresponse().read()
            proc.ready_after = time.monotonic() - proc.started
            return proc.ready_after
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
        finally:
            conn.close()
    raise RuntimeError(f"{proc.name} not ready on port {port} after {timeout:.0f}s:\n{proc.tail()}")


def stop(proc: Proc, grace: float = 10.0) -> None:
    """SIGTERM the process group the bench created; SIGKILL it if it outlives ``grace``."""
    if proc.popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.popen.wait(grace)
    except subprocess.TimeoutExpired:
        # The leader is not reaped yet, so the group id is still the one we made.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(5)


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which may itself hold spaces and parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, ()))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants, in seconds."""
    ticks = 0
    for p in tree(pid):
        fields = _stat(p)
        if fields is not None:
            # /proc/<pid>/stat fields 14 and 15 (1-based), i.e. 11 and 12 after ")".
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` and its live descendants, in MiB."""
    kib = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
    return kib / 1024
