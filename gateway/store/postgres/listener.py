"""LISTEN/NOTIFY watcher: PostgreSQL tells this node the moment another one commits.

Every PostgreSQL write transaction runs ``pg_notify('keygate_changes', '<seq>')``,
delivered to listeners when it commits. A listener holds one dedicated
connection (never one of the pool's: a pooled connection is reset and shared,
and would drop the ``LISTEN``) and calls ``on_notice()``; the gateway answers by
polling the change feed at once instead of at the next poll tick.

Notices are a latency shortcut, never the only path: if the connection drops
we reconnect with backoff, call ``on_notice()`` once on recovery to catch what
was missed, and meanwhile the ``ChangeWatcher`` poll loop keeps applying
changes on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from keygate.gateway import background
from keygate.gateway.errors import KeygateError

log = logging.getLogger("keygate.pglisten")

CHANNEL = "keygate_changes"

OnNotice = Callable[[], Awaitable[Any]]

# What a lost or refused connection raises; anything else is a bug and is logged as one.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # protocol state broken by a dropped connection
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
)


class PgChangeListener:
    """``LISTEN keygate_changes`` on a dedicated connection, reconnecting with backoff."""

    def __init__(
        self,
        url: str,
        on_notice: OnNotice,
        *,
        connect_timeout: float = 5.0,
        keepalive: float = 10.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self._url = url
        self._on_notice = on_notice
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lost = False
        self._conn: Any = None
        self._down = False
        self.connected = asyncio.Event()  # set while LISTEN is active (tests wait on it)
        self.backend_pid: int | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="keygate-pglisten")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await background.stop(task)

    def delivers_all(self) -> bool:
        """While LISTEN is active PostgreSQL delivers every committed NOTIFY; a
        connection that died silently is found by the keepalive within
        ``keepalive`` seconds, and the reconnect catches up (``_deliver``)."""
        return self.connected.is_set()

    # --- asyncpg callbacks (plain functions, run on the loop) ----------------
    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._wake.set()

    def _terminated(self, conn: Any) -> None:
        if conn is self._conn:  # not a late callback from a connection already replaced
            self._lost = True
            self._wake.set()

    # --- the loop -------------------------------------------------------------
    async def _run(self) -> None:
        delay = self._backoff_initial
        while True:
            try:
                await self._connect()
                delay = self._backoff_initial
                if self._down:
                    log.warning("change notices recovered: LISTEN %s is active again", CHANNEL)
                    self._down = False
                # Catch up on whatever was committed while we were not listening.
                await self._deliver()
                await self._listen()
            except Exception as exc:
                if not isinstance(exc, CONNECTION_ERRORS):
                    log.exception("change listener failed")
                if not self._down:
                    log.warning(
                        "change notices down (%s): LISTEN %s lost, falling back to polling "
                        "until it reconnects",
                        type(exc).__name__,
                        CHANNEL,
                    )
                    self._down = True
            finally:
                await self._disconnect()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max)

    async def _connect(self) -> None:
        self._lost = False
        self._conn = await asyncpg.connect(self._url, timeout=self._connect_timeout)
        self._conn.add_termination_listener(self._terminated)
        await self._conn.add_listener(CHANNEL, self._notified)
        self.backend_pid = self._conn.get_server_pid()
        self.connected.set()

    async def _disconnect(self) -> None:
        self.connected.clear()
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), timeout=self._connect_timeout)
        except BaseException as exc:
            conn.terminate()  # never leave a socket behind, even when cancelled
            if not isinstance(exc, CONNECTION_ERRORS):
                raise

    async def _listen(self) -> None:
        """Deliver notices until the connection is lost (then raise)."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._keepalive)
            except TimeoutError:
                # Quiet for a while: prove the connection is alive (a half-open
                # TCP connection would otherwise hide lost notices forever).
                await self._conn.fetchval("SELECT 1", timeout=self._connect_timeout)
                continue
            # Cleared before the callback runs: a notice during it sets it again.
            self._wake.clear()
            if self._lost or self._conn.is_closed():
                raise ConnectionResetError("listener connection lost")
            await self._deliver()

    async def _deliver(self) -> None:
        try:
            await self._on_notice()
        except KeygateError as exc:
            # The store does not answer (yet): its health says so once; the
            # poll loop applies the change once it does.
            log.debug("change notice handler: %s", type(exc).__name__, exc_info=exc)
        except Exception:
            # The poll loop still applies the change; do not drop LISTEN over it.
            log.exception("change notice handler failed")
