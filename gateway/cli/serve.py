"""Run keygate: prepare the store, then one process or a supervisor of N workers.

Nothing opens a store connection in the parent after preparation is closed, so
a forked worker inherits no connection, thread or event loop. SIGTERM/SIGINT
drain in-flight requests (``server.shutdown_timeout``), flush last-used stamps
through ``cleanup_ctx`` and exit 0.

Start-up never hangs: a failure (a file that is not a database, a corrupt
table, a read-only directory, a store schema from a newer keygate, a port
taken) is one line naming the store or the address and the database's own
reason, then exit status 1, with every store connection closed. A stop signal
at any moment of start-up abandons it: what was opened is closed within
``STARTUP_ABANDON`` seconds, or the process leaves without waiting for it
(nothing has been served, so nothing is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from aiohttp import web

from keygate.config import ConfigError
from keygate.config.settings import Settings
from keygate.gateway.errors import KeygateError
from keygate.gateway.http.accesslog import AccessLogger
from keygate.gateway.http.app import build_app
from keygate.gateway.http.logsetup import (
    configure_logging,
    flush_access_log,
    flush_access_log_periodically,
)
from keygate.gateway.http.reload import Reloader, check
from keygate.gateway.http.server import KeygateRunner
from keygate.gateway.http.tls import ListenerTls
from keygate.gateway.service import ServiceContext
from keygate.gateway.service.bootstrap import create_first_admin
from keygate.gateway.store import open_store
from keygate.gateway.store.health import explain, redact_url

log = logging.getLogger("keygate")

# Seconds a thread may hold the GIL while another waits (see serve_worker).
SWITCH_INTERVAL = 0.0005
# Seconds a start-up abandoned for a stop signal (or failed) may take to close
# what it opened, and then that its store threads may take to end, before the
# process leaves regardless: an SQLite statement waiting for another process's
# lock cannot be interrupted (busy_timeout).
STARTUP_ABANDON = 2.0
THREADS_GRACE = 1.0

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# SIGHUP re-reads the configuration (docs/reference.md#reloading-the-configuration).
# Held (blocked) until a handler exists: its default action ends the process.
RELOAD_SIGNAL = (signal.SIGHUP,)
Load = Callable[[], Settings]


class CannotListen(KeygateError):
    def __init__(self, listen: str, exc: OSError) -> None:
        super().__init__(f"cannot listen on {listen}: {exc.strerror or exc}")


async def prepare_store(settings: Settings) -> str | None:
    """Migrate; on an empty store create the first admin and return its token."""
    store = open_store(settings.store.url, pool_size=1)
    await store.open()
    try:
        if await store.count_admins() > 0:
            return None
        issued = await create_first_admin(ServiceContext(store, settings.auth))
        return issued.token
    finally:
        await store.close()


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where available
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _serve(
    settings: Settings,
    *,
    reuse_port: bool,
    on_serving: Callable[[], None],
    load: Load | None = None,
    metrics_dir: str | None = None,
) -> bool:
    """Serve until SIGTERM/SIGINT (SIGHUP: re-read ``load()``); False when a
    stop signal came before serving began."""
    server = settings.server
    context = check(settings)
    tls = ListenerTls(context) if context is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    # serve_worker blocked these signals; one sent during start-up is delivered
    # now, to the handler above, and abandons the start.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    runner = KeygateRunner(
        build_app(settings, metrics_dir=metrics_dir),
        handle_signals=False,
        shutdown_timeout=server.shutdown_timeout,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("keygate.access") if server.access_log else None,
    )
    started = False
    give_up_at: float | None = None  # loop time by which an unfinished start is left
    try:
        # cleanup_ctx start: opens the store inside this process.
        setup = asyncio.ensure_future(runner.setup())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({setup, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not setup.done():
            give_up_at = loop.time() + STARTUP_ABANDON
            setup.cancel()  # each resource closes what it had opened
            await asyncio.wait({setup}, timeout=STARTUP_ABANDON)
            return False
        setup.result()  # a start-up failure raises here
        site = web.TCPSite(
            runner,
            server.host,
            server.port,
            reuse_port=reuse_port or None,
            ssl_context=tls.context if tls is not None else None,
        )
        try:
            await site.start()
        except OSError as exc:
            raise CannotListen(server.listen, exc) from None
        started = True
        if load is not None:
            loop.add_signal_handler(signal.SIGHUP, Reloader(runner, load, tls))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, RELOAD_SIGNAL)  # one held meanwhile: now
        on_serving()
        log.info("worker %d serving on %s", os.getpid(), server.listen)
        flusher = asyncio.create_task(flush_access_log_periodically())
        await stop.wait()
        flusher.cancel()
        log.info("worker %d stopping: draining in-flight requests", os.getpid())
        return True
    finally:
        # Stop listening, wait for in-flight requests (shutdown_timeout), then
        # run cleanup_ctx in reverse: last-used flush before the store closes.
        # A start that failed or was abandoned runs the cleanups of what it
        # had opened (aiohttp does so for a startup that did not finish),
        # within what is left of STARTUP_ABANDON.
        if started:
            await runner.cleanup()
        else:
            if give_up_at is None:
                give_up_at = loop.time() + STARTUP_ABANDON
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    runner.cleanup(), timeout=max(0.1, give_up_at - loop.time())
                )
            # A store connection's thread may still hand a result back to this
            # loop (aiosqlite stops its thread without waiting): keep the loop
            # running until those threads end, or the time is up.
            while _store_threads() and loop.time() < give_up_at:  # noqa: ASYNC110 - threads, no event
                await asyncio.sleep(0.01)
        flush_access_log()


def _store_threads() -> list[threading.Thread]:
    """Threads that would hold the process's exit: not daemons, not the loop's
    idle executor workers."""
    return [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and not t.name.startswith("asyncio")
    ]


class Report:
    """What a supervised worker tells its parent through a pipe: that it serves,
    or why it could not start (the parent prints that one line)."""

    SERVING = b"S"
    FAILED = b"F"

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            os.write(self.fd, data)

    def serving(self) -> None:
        self._send(self.SERVING)

    def failed(self, reason: str) -> None:
        self._send(self.FAILED + reason.encode("utf-8", "replace")[:2048])


def freeze_start_up_heap() -> None:
    """Take what start-up built out of the garbage collector's sight for good.

    CPython's full collection walks every tracked container and each of its
    members: the key-id set alone (one int per key, docs/architecture.md#pauses)
    costs 42 ms a walk at 1,000,000 keys, and cache misses, by promoting new
    entries, start one every few seconds. Nothing start-up built is garbage
    (what it left behind is collected first), and what it built lives as long
    as the worker: frozen, it is never walked again (``gc.freeze``). Objects
    that die later still go by reference counting.
    """
    gc.collect()
    gc.freeze()


def serve_worker(
    settings: Settings,
    *,
    reuse_port: bool,
    announce: bool = False,
    report: Report | None = None,
    load: Load | None = None,
    metrics_dir: str | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT in this process (SIGHUP: re-read ``load()``);
    return the exit code. ``metrics_dir``: where a supervisor's workers share
    their metrics."""
    # Until the event loop's handlers exist, a stop or reload signal waits (see _serve).
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS + RELOAD_SIGNAL)
    # The SQLite store answers from a thread that needs the GIL to hand its
    # result back. A busy event loop keeps the GIL for the whole switch
    # interval (5 ms by default), so every cache miss would wait that long.
    sys.setswitchinterval(SWITCH_INTERVAL)

    def on_serving() -> None:
        freeze_start_up_heap()
        if announce:
            announce_bound(settings)
        if report is not None:
            report.serving()

    loop = new_loop()
    failure: str | None = None
    status = 1
    try:
        served = loop.run_until_complete(
            _serve(
                settings,
                reuse_port=reuse_port,
                on_serving=on_serving,
                load=load,
                metrics_dir=metrics_dir,
            )
        )
    except KeygateError as exc:
        failure = explain(exc, redact_url(settings.store.url))
    except ConfigError as exc:  # a TLS file changed since it was checked
        failure, status = f"config error: {exc}", 2
    finally:
        loop.close()
    if failure is not None:
        if report is not None:
            report.failed(failure)
        else:
            print(f"keygate: {failure}", file=sys.stderr, flush=True)
        return leave_promptly(status)
    if not served:
        return leave_promptly(0)
    return 0


def leave_promptly(code: int) -> int:
    """``code``, once no thread (a store connection's) would hold the exit; past
    ``THREADS_GRACE`` seconds the process leaves without waiting for them."""
    deadline = time.monotonic() + THREADS_GRACE
    for thread in _store_threads():
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            logging.shutdown()
            sys.stderr.flush()
            os._exit(code)
    return code


def run(settings: Settings, load: Load | None = None) -> int:
    """``keygate serve``: prepare, announce, serve (blocking). ``load`` reads the
    configuration anew, on SIGHUP."""
    signal.pthread_sigmask(signal.SIG_BLOCK, RELOAD_SIGNAL)  # until it is handled
    check(settings)  # bad TLS files: one line, exit 2 (before the store is touched)
    configure_logging()
    try:
        token = asyncio.run(prepare_store(settings))
    except KeygateError as exc:
        print(f"keygate: {explain(exc, redact_url(settings.store.url))}", file=sys.stderr)
        return 1
    if token is not None:
        print(
            "keygate: created the first admin user 'admin'. Its API key is shown ONCE:\n\n"
            f"    {token}\n\n"
            "Store it now (for example in a password manager); it cannot be shown again.",
            file=sys.stderr,
        )
    if not settings.routes:
        print(
            "keygate: warning: no routes are configured, so every proxied request gets "
            "404 no_route; add [[routes]] to the config or use --upstream URL",
            file=sys.stderr,
        )
    if settings.server.workers == 1:
        return serve_worker(settings, reuse_port=False, announce=True, load=load)
    from keygate.gateway.cli.supervisor import supervise

    return supervise(settings, settings.server.workers, load)


def announce_bound(settings: Settings) -> None:
    """The start-up line, printed only once the port is bound."""
    workers = settings.server.workers
    routes = ", ".join(f"{r.prefix} -> {r.upstream}" for r in settings.routes) or "none"
    scheme = "https" if settings.server.tls_cert_file is not None else "http"
    base = f"{scheme}://{settings.server.listen}"
    console = f"{base}{settings.server.admin_prefix.rstrip('/')}/console/"
    print(
        f"keygate: listening on {base} with {workers} "
        f"worker{'s' if workers != 1 else ''}; admin API at {settings.server.admin_prefix}; "
        f"store {redact_url(settings.store.url)}; routes: {routes}\n"
        f"keygate: web console at {console} (sign in with an admin or self-service key)",
        file=sys.stderr,
        flush=True,
    )
