"""Write flow control shared by keygate's asyncio protocols (client and upstream side)."""

from __future__ import annotations

import asyncio


class WriteFlow:
    """``pause_writing``/``resume_writing`` as a flag and a future to wait on.

    A writer that finds ``_write_paused`` set awaits a ``_drain`` future it
    created, which resuming (or losing the connection) resolves.
    """

    __slots__ = ("_drain", "_write_paused")

    def __init__(self) -> None:
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
