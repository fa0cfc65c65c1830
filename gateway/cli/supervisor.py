"""The parent of ``server.workers`` processes sharing one port (SO_REUSEPORT).

Each worker tells the parent through a pipe when it serves, or why it could
not start (``serve.Report``). The parent:

- restarts a worker that dies (a crash, an OOM kill, an operator's kill) with
  exponential back-off — ``BACKOFF_FIRST`` doubling up to ``BACKOFF_MAX`` —
  reset once a worker has served ``HEALTHY_AFTER`` seconds. The other workers
  are never touched: a worker that keeps dying costs its own slot, never the
  service;
- ends, with the worker's one-line reason and status 1, only when workers
  cannot start at all: one exits by itself before serving while none has
  served yet (bad configuration, a store that cannot be opened, the port
  taken). Once the gateway has served, a replacement that fails to start
  (the store down for a moment) is retried with the same back-off;
- on SIGTERM/SIGINT, at any moment (a back-off wait included), stops every
  worker gracefully and exits 0 once they have;
- keeps the workers' metrics directory (gateway/metrics/exposition.py): a
  fresh one for each start, a dead worker's gauges marked dead
  (``mark_process_dead``, its counters still count), removed at the end;
- on SIGHUP, sends it on to every worker (each re-reads the configuration and
  logs the outcome) and re-reads it too, so a worker started later serves the
  configuration reloaded last.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from types import FrameType

from keygate.config import ConfigError
from keygate.config.reload import reloadable
from keygate.config.settings import Settings
from keygate.gateway.cli.serve import (
    RELOAD_SIGNAL,
    STOP_SIGNALS,
    Load,
    Report,
    announce_bound,
    serve_worker,
)
from keygate.gateway.http.reload import check
from keygate.gateway.metrics.exposition import mark_process_dead

BACKOFF_FIRST = 0.1  # seconds before the first restart
BACKOFF_MAX = 30.0
# A worker that served this long was healthy: the next death starts the
# back-off afresh.
HEALTHY_AFTER = 30.0


def backoff(streak: int) -> float:
    """Seconds to wait before restarting after ``streak`` deaths in a row."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** max(0, streak - 1))


@dataclass
class Worker:
    pid: int
    fd: int  # the read end of its report pipe
    serving_since: float | None = None
    failure: str | None = None
    closed = False  # its end of the pipe is closed: nothing more to read

    def read_reports(self) -> None:
        while not self.closed:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            if data.startswith(Report.SERVING) and self.serving_since is None:
                self.serving_since = time.monotonic()
                data = data[1:]
            if data.startswith(Report.FAILED):
                self.failure = data[1:].decode("utf-8", "replace")


def _nonblocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


def _how(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with {code}"


class Supervisor:
    def __init__(
        self, settings: Settings, count: int, probe: socket.socket, load: Load | None = None
    ) -> None:
        self.settings = settings
        self._load = load
        self.count = count
        self.probe: socket.socket | None = probe
        self.workers: dict[int, Worker] = {}
        self.restarts: list[float] = []  # monotonic times a restart is due
        self.stopping = False
        self.status = 0
        self.streak = 0
        self.served = False  # some worker has served: start-up is over
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            _nonblocking(fd)
        # Where the workers publish their metrics; fresh for each start, so no
        # number of an earlier run is counted again.
        self.metrics_dir = (
            tempfile.mkdtemp(prefix="keygate-metrics-") if settings.metrics.enabled else None
        )

    # --- signals ------------------------------------------------------------
    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
        if self._load is not None:
            with contextlib.suppress(ConfigError):  # refused: the workers log why
                loaded = self._load()
                check(loaded)
                self.settings, _ = reloadable(self.settings, loaded)

    def stop(self) -> None:
        self.stopping = True
        self.restarts.clear()
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    # --- workers ------------------------------------------------------------
    def spawn(self) -> None:
        read_end, write_end = os.pipe()
        # The child inherits the blocked mask: a stop or reload signal that
        # arrives before its event loop can handle it is held, not fatal (see
        # serve._serve).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS + RELOAD_SIGNAL)
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                self._become_worker(read_end)
                code = serve_worker(
                    self.settings,
                    reuse_port=True,
                    report=Report(write_end),
                    load=self._load,
                    metrics_dir=self.metrics_dir,
                )
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(write_end)
        _nonblocking(read_end)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS + RELOAD_SIGNAL)
        self.workers[pid] = Worker(pid, read_end)

    def _become_worker(self, read_end: int) -> None:
        signal.set_wakeup_fd(-1)
        for signum in (*STOP_SIGNALS, *RELOAD_SIGNAL, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        for fd in (read_end, self._wake_r, self._wake_w, *(w.fd for w in self.workers.values())):
            os.close(fd)
        if self.probe is not None:
            self.probe.close()

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if self.metrics_dir is not None:
                # Its gauges (requests in flight) no longer count; its counters do.
                mark_process_dead(pid, self.metrics_dir)
            if worker is not None:
                self._read(worker)
                os.close(worker.fd)
                self._ended(worker, os.waitstatus_to_exitcode(wait_status))

    def _read(self, worker: Worker) -> None:
        worker.read_reports()
        if worker.serving_since is not None and not self.served:
            self.served = True
            announce_bound(self.settings)  # the start-up line, once a worker serves

    def _ended(self, worker: Worker, code: int) -> None:
        if self.stopping:
            if code != 0:
                self.status = 1
            return
        if worker.failure is None and worker.serving_since is None and code > 0:
            worker.failure = f"exited with {code} before serving"
        if worker.failure is not None and not self.served:
            print(
                f"keygate: a worker could not start, stopping: {worker.failure}",
                file=sys.stderr,
                flush=True,
            )
            self.status = 1
            self.stop()
            return
        now = time.monotonic()
        if worker.serving_since is not None and now - worker.serving_since >= HEALTHY_AFTER:
            self.streak = 0
        self.streak += 1
        delay = backoff(self.streak)
        how = (
            f"could not start ({worker.failure})"
            if worker.failure is not None
            else _how(code)
        )
        print(
            f"keygate: worker {worker.pid} {how}; starting another in {delay:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        self.restarts.append(now + delay)

    # --- the loop -------------------------------------------------------------
    def run(self) -> int:
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes select()
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, RELOAD_SIGNAL)  # held since serve.run
        try:
            for _ in range(self.count):
                if not self.stopping:
                    self.spawn()
            if self.probe is not None:
                self.probe.close()
                self.probe = None
            while self.workers or self.restarts:
                self._reap()
                now = time.monotonic()
                due = [t for t in self.restarts if t <= now]
                if due and not self.stopping:
                    self.restarts = [t for t in self.restarts if t > now]
                    for _ in due:
                        self.spawn()
                if not self.workers and not self.restarts:
                    break
                self._wait(min(self.restarts, default=None))
        finally:
            signal.set_wakeup_fd(-1)
            os.close(self._wake_r)
            os.close(self._wake_w)
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return self.status

    def _wait(self, until: float | None) -> None:
        """Until a signal (a child's end, a stop), a worker's report, or ``until``."""
        timeout = None if until is None else max(0.0, until - time.monotonic())
        fds = [self._wake_r, *(w.fd for w in self.workers.values() if not w.closed)]
        readable, _, _ = select.select(fds, [], [], timeout)
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
        for worker in self.workers.values():
            if worker.fd in readable:
                self._read(worker)


def supervise(settings: Settings, workers: int, load: Load | None = None) -> int:
    """Fork ``workers`` processes sharing the port; keep them running (module doc)."""
    # Bind once in the parent to fail fast with one clear line if the port is taken.
    try:
        probe = socket.create_server(
            (settings.server.host, settings.server.port), reuse_port=True
        )
    except OSError as exc:
        print(
            f"keygate: cannot listen on {settings.server.listen}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    return Supervisor(settings, workers, probe, load).run()
