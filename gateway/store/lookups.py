"""The verifier's cache misses, batched: the misses of one loop pass are one query.

Under load a cache miss is rarely alone: the misses that arrive in one pass
of the event loop are collected and read with one statement (PostgreSQL:
``k.id = ANY($1)`` on a prepared statement; SQLite: ``json_each``), sent at
the start of the next pass. Misses for the same key id in one batch share
its row (a hot key evicted, or just created, is read once however many
connections present it at once).

Only misses that have not been sent yet are coalesced: joining a query
already in flight could hand a caller rows read before a change notice it
has applied (the verifier's ``generation`` check assumes its read starts
after it looked). A key id asked for while its batch is in flight goes into
the next batch.

Each caller gets its own future, so a cancelled caller (a client that went
away) cancels nothing that others wait for.

docs/architecture.md#cache-misses says what this costs and saves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

log = logging.getLogger("keygate.store")

# key ids -> every row the statement returned for them (row[0] is the key id).
FetchRows = Callable[[list[str]], Awaitable[Sequence[Any]]]
# The same read done at once, without leaving the loop thread; None when it
# cannot be done that way now (then ``FetchRows`` runs instead).
ReadNow = Callable[[list[str]], Sequence[Any] | None]

# At most this many key ids go into one statement; more misses in one pass
# become several batches, and on SQLite's loop read several passes: a read on
# the loop stays short (docs/architecture.md#cache-misses).
MAX_BATCH = 256

Waiters = dict[str, list[asyncio.Future[list[Any]]]]


class KeyLookups:
    """Batches the ``rows(key_id)`` calls of one loop pass into one read.

    With ``read_now`` (SQLite on the loop), the batch is read synchronously
    in a callback at the start of the next pass; otherwise a task sends it
    then and awaits ``fetch``.
    """

    def __init__(
        self, fetch: FetchRows, read_now: ReadNow | None = None, max_batch: int = MAX_BATCH
    ) -> None:
        self._fetch = fetch
        self._read_now = read_now
        self._max_batch = max_batch
        self._pending: Waiters = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Statements sent, key ids asked, and of them read on the loop
        # (tests and the bench read these).
        self.queries = 0
        self.asked = 0
        self.read_on_loop = 0

    async def rows(self, key_id: str) -> list[Any]:
        """Every row the lookup statement has for ``key_id`` (none: no such key)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        waiting = self._pending.get(key_id)
        if waiting is None:
            self._pending[key_id] = [future]
        else:
            waiting.append(future)
        if not self._scheduled:
            self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = True
        if self._read_now is not None:
            loop.call_soon(self._send_now)
        else:
            self._start(loop.create_task(self._send_later()))

    def _take(self) -> Waiters:
        """The oldest ``max_batch`` waiting key ids; the rest wait for the next pass."""
        pending = self._pending
        if len(pending) <= self._max_batch:
            self._pending = {}
            return pending
        ids = list(pending)
        batch = {key_id: pending.pop(key_id) for key_id in ids[: self._max_batch]}
        return batch

    def _send_now(self) -> None:
        assert self._read_now is not None
        self._scheduled = False
        batch = self._take()
        if self._pending:
            self._schedule(asyncio.get_running_loop())
        ids = list(batch)
        self.queries += 1
        self.asked += len(ids)
        try:
            found = self._read_now(ids)
        except Exception as exc:  # handed to every waiter, as a failed fetch is
            _fail(batch, exc)
            return
        if found is None:  # not on the loop this time: the thread reads it
            self.queries -= 1
            self.asked -= len(ids)
            self._start(asyncio.ensure_future(self._answer(batch)))
            return
        self.read_on_loop += len(ids)
        _resolve(batch, found)

    async def _send_later(self) -> None:
        self._scheduled = False
        batch = self._take()
        if self._pending:
            self._schedule(asyncio.get_running_loop())
        await self._answer(batch)

    def _start(self, task: asyncio.Future[None]) -> None:
        self._tasks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]

    async def _answer(self, batch: Waiters) -> None:
        self.queries += 1
        self.asked += len(batch)
        try:
            found = await self._fetch(list(batch))
        except Exception as exc:  # each waiter raises it
            _fail(batch, exc)
            return
        except BaseException as exc:
            _fail(batch, exc)
            raise
        _resolve(batch, found)

    async def close(self) -> None:
        """Wait for the batches in flight (their callers are answered)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _resolve(batch: Waiters, found: Sequence[Any]) -> None:
    by_id: dict[str, list[Any]] = {}
    for row in found:
        by_id.setdefault(row[0], []).append(row)
    for key_id, futures in batch.items():
        key_rows = by_id.get(key_id, [])
        for future in futures:
            if not future.done():
                future.set_result(key_rows)


def _fail(batch: Waiters, exc: BaseException) -> None:
    for futures in batch.values():
        for future in futures:
            if not future.done():
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
