"""Run keygate: prepare the store, then one process or a supervisor of N workers.

Nothing opens a store connection in the parent after preparation is closed, so
a forked worker inherits no connection, thread or event loop. SIGTERM/SIGINT
drain in-flight requests (``server.shutdown_timeout``), flush last-used stamps
through ``cleanup_ctx`` and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from types import FrameType

from aiohttp import web
from yarl import URL

from keygate.config import ConfigError
from keygate.config.reload import reloadable
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

log = logging.getLogger("keygate")

# A worker that dies sooner than this after its start counts towards a crash loop.
CRASH_WINDOW = 5.0
# Seconds a thread may hold the GIL while another waits (see serve_worker).
SWITCH_INTERVAL = 0.0005
MAX_QUICK_CRASHES = 5


def redact(url: str) -> str:
    try:
        parsed = URL(url)
    except ValueError:
        return "<store url>"
    return str(parsed.with_password("***")) if parsed.password else url


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


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# SIGHUP re-reads the configuration (docs/reference.md#reloading-the-configuration).
# Held (blocked) until a handler exists: its default action ends the process.
RELOAD_SIGNAL = (signal.SIGHUP,)
Load = Callable[[], Settings]


async def _serve(
    settings: Settings, *, reuse_port: bool, announce_bound: bool, load: Load | None = None
) -> None:
    server = settings.server
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    # serve_worker blocked these signals; one sent during start-up is delivered
    # now, to the handler above, and becomes a graceful stop.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    context = check(settings)
    tls = ListenerTls(context) if context is not None else None
    runner = KeygateRunner(
        build_app(settings),
        handle_signals=False,
        shutdown_timeout=server.shutdown_timeout,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("keygate.access") if server.access_log else None,
    )
    await runner.setup()  # cleanup_ctx start: opens the store inside this process
    try:
        site = web.TCPSite(
            runner,
            server.host,
            server.port,
            reuse_port=reuse_port or None,
            ssl_context=tls.context if tls is not None else None,
        )
        await site.start()
        if load is not None:
            loop.add_signal_handler(signal.SIGHUP, Reloader(runner, load, tls))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, RELOAD_SIGNAL)  # one held meanwhile: now
        if announce_bound:
            announce(settings)
        log.info("worker %d serving on %s", os.getpid(), server.listen)
        flusher = asyncio.create_task(flush_access_log_periodically())
        await stop.wait()
        flusher.cancel()
        log.info("worker %d stopping: draining in-flight requests", os.getpid())
    finally:
        # Stop listening, wait for in-flight requests (shutdown_timeout), then
        # run cleanup_ctx in reverse: last-used flush before the store closes.
        await runner.cleanup()
        flush_access_log()


def serve_worker(
    settings: Settings, *, reuse_port: bool, announce: bool = False, load: Load | None = None
) -> int:
    """Serve until SIGTERM/SIGINT in this process (SIGHUP: re-read ``load()``);
    return the exit code."""
    # Until the event loop's handlers exist, a stop signal waits (see _serve).
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS + RELOAD_SIGNAL)
    # The SQLite store answers from a thread that needs the GIL to hand its
    # result back. A busy event loop keeps the GIL for the whole switch
    # interval (5 ms by default), so every cache miss would wait that long.
    sys.setswitchinterval(SWITCH_INTERVAL)
    loop = new_loop()
    try:
        loop.run_until_complete(
            _serve(settings, reuse_port=reuse_port, announce_bound=announce, load=load)
        )
    except KeygateError as exc:
        print(f"keygate: {exc.message}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # a TLS file changed since it was checked
        print(f"keygate: config error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        listen = settings.server.listen
        print(f"keygate: cannot listen on {listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0


def run(settings: Settings, load: Load | None = None) -> int:
    """``keygate serve``: prepare, announce, serve (blocking). ``load`` reads the
    configuration anew, on SIGHUP."""
    signal.pthread_sigmask(signal.SIG_BLOCK, RELOAD_SIGNAL)  # until it is handled
    check(settings)  # bad TLS files: one line, exit 2 (before the store is touched)
    configure_logging()
    try:
        token = asyncio.run(prepare_store(settings))
    except KeygateError as exc:
        print(f"keygate: {exc.message}", file=sys.stderr)
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
    return supervise(settings, settings.server.workers, load)


def announce(settings: Settings) -> None:
    """The start-up line, printed only once the port is bound."""
    workers = settings.server.workers
    routes = ", ".join(f"{r.prefix} -> {r.upstream}" for r in settings.routes) or "none"
    scheme = "https" if settings.server.tls_cert_file is not None else "http"
    base = f"{scheme}://{settings.server.listen}"
    console = f"{base}{settings.server.admin_prefix.rstrip('/')}/console/"
    print(
        f"keygate: listening on {base} with {workers} "
        f"worker{'s' if workers != 1 else ''}; admin API at {settings.server.admin_prefix}; "
        f"store {redact(settings.store.url)}; routes: {routes}\n"
        f"keygate: web console at {console} (sign in with an admin or self-service key)",
        file=sys.stderr,
        flush=True,
    )


def supervise(settings: Settings, workers: int, load: Load | None = None) -> int:
    """Fork ``workers`` processes sharing the port (SO_REUSEPORT); restart crashes.
    SIGHUP goes on to every worker (each re-reads the configuration)."""
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
    announce(settings)
    stopping = False
    children: dict[int, float] = {}
    quick_crashes = 0

    def spawn() -> None:
        # The child inherits the blocked mask: a stop signal that arrives before
        # its event loop can handle it is held, not fatal (see _serve).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        signal.pthread_sigmask(signal.SIG_BLOCK, RELOAD_SIGNAL)
        pid = os.fork()
        if pid == 0:  # child
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)  # held until its loop handles it
            probe.close()
            code = serve_worker(reloads.settings, reuse_port=True, load=load)
            os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, RELOAD_SIGNAL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        children[pid] = time.monotonic()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reloads = ForwardReload(settings, load, children)
    signal.signal(signal.SIGHUP, reloads.on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, RELOAD_SIGNAL)
    for _ in range(workers):
        spawn()
    probe.close()
    status = 0
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        started = children.pop(pid, None)
        if started is None:
            continue
        code = os.waitstatus_to_exitcode(wait_status)
        if stopping:
            if code != 0:
                status = 1
            continue
        print(f"keygate: worker {pid} exited with {code}; starting another", file=sys.stderr)
        if time.monotonic() - started < CRASH_WINDOW:
            quick_crashes += 1
            if quick_crashes >= MAX_QUICK_CRASHES:
                print("keygate: workers keep crashing at start; giving up", file=sys.stderr)
                on_signal(signal.SIGTERM, None)
                status = 1
                continue
            time.sleep(min(0.2 * quick_crashes, 2.0))  # back off a crash loop
        else:
            quick_crashes = 0
        spawn()
    return status


class ForwardReload:
    """The supervisor's SIGHUP: on to every worker; the configuration a worker
    started later gets is the one reloaded last (the workers log the outcome)."""

    def __init__(self, settings: Settings, load: Load | None, children: Mapping[int, float]):
        self.settings = settings
        self._load = load
        self._children = children

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
        if self._load is not None:
            with contextlib.suppress(ConfigError):  # refused: the workers log why
                loaded = self._load()
                check(loaded)
                self.settings, _ = reloadable(self.settings, loaded)
