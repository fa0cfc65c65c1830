"""The client's request body as the chunks a forwarder sends upstream (SPEC §5).

Streamed, never buffered whole: the wait for each chunk is bounded by
``server.body_idle_timeout``, and a route's ``max_body_bytes`` is enforced on
what actually arrives (a chunked body declares no size).
"""

from __future__ import annotations

import asyncio

from aiohttp.streams import StreamReader

from .errors import BadRequest, KeygateError, TooLarge


class RequestBody:
    """The client's request body as chunks, enforcing the body idle timeout and size limit.

    Failures are kept in ``error``: the client deserves the real reason (413,
    stalled or broken body) rather than the upstream failure they cause.
    """

    __slots__ = ("_content", "_idle", "_limit", "_received", "error", "sent")

    def __init__(self, content: StreamReader, limit: int | None, idle: float) -> None:
        self._content = content
        self._limit = limit
        self._idle = idle
        self._received = 0
        self.error: KeygateError | None = None
        self.sent = False  # every byte went upstream

    @property
    def consumed(self) -> bool:
        """Whether a chunk was taken from the client: the body cannot be sent again."""
        return self._received > 0

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            # Bounds the wait between chunks, not the whole upload.
            async with asyncio.timeout(self._idle):
                chunk = await self._content.readany()
        except Exception as exc:  # stalled, client gone, or malformed chunked body
            error: KeygateError = (
                BadRequest("The request body stalled.", code="body_timeout")
                if isinstance(exc, TimeoutError)
                else BadRequest("The request body could not be read.")
            )
            self.error = error
            raise error from exc
        if not chunk:
            raise StopAsyncIteration
        self._received += len(chunk)
        if self._limit is not None and self._received > self._limit:
            # A chunked body has no declared size: the limit is found here.
            self.error = error = TooLarge()
            raise error
        return chunk


def failure(body: RequestBody | None, default: KeygateError) -> KeygateError:
    """The body's own error if it broke the exchange, else ``default``."""
    if body is not None and body.error is not None:
        return body.error
    return default
