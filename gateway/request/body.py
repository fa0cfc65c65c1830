"""The client's request body as the chunks a forwarder sends upstream (aiohttp front end).

Streamed, never buffered whole: the wait for each chunk is bounded by
``server.body_idle_timeout``, and a route's ``max_body_bytes`` is enforced on
what actually arrives (a chunked body declares no size). A body whose form
fields must be checked for method overrides (:class:`BodyCheck`) is checked
as it passes, one byte behind: the last byte read is held back until the next
chunk (or the end) has been checked too, so an upstream never receives a
whole body that the check goes on to refuse (docs/security.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp.streams import StreamReader

from keygate.gateway.errors import BadRequest, Forbidden, KeygateError, TooLarge
from keygate.gateway.request.scanners import FormScanner

log = logging.getLogger("keygate")


class BodyCheck:
    """The methods a form body names as overrides must each be ``allowed``."""

    __slots__ = ("_allowed", "_scanner")

    def __init__(self, scanner: FormScanner, allowed: Callable[[str], bool]) -> None:
        self._scanner = scanner
        self._allowed = allowed

    def feed(self, data: bytes) -> None:
        self._judge(self._scan(self._scanner.feed, data))

    def finish(self) -> None:
        self._judge(self._scan(lambda _: self._scanner.finish(), b""))

    @staticmethod
    def _scan(step: Callable[[bytes], list[str]], data: bytes) -> list[str]:
        try:
            return step(data)
        except KeygateError:
            raise
        except Exception as exc:
            # A body no scanner can read is not let through unchecked (and a
            # scanner bug is a refusal, never a 500 or a stuck upload).
            log.warning("request body could not be checked: %s", type(exc).__name__)
            raise BadRequest("The request body could not be checked.") from exc

    def whole(self, body: bytes) -> None:
        """Check a body that is all here."""
        self.feed(body)
        self.finish()

    def _judge(self, methods: list[str]) -> None:
        for method in methods:
            if not self._allowed(method):
                raise Forbidden("The API key may not do this.")


class RequestBody:
    """The client's request body as chunks, enforcing the body idle timeout and size limit.

    Failures are kept in ``error``: the client deserves the real reason (413,
    stalled or broken body, a forbidden override) rather than the upstream
    failure they cause.
    """

    __slots__ = (
        "_check",
        "_content",
        "_held",
        "_idle",
        "_limit",
        "_prefetched",
        "_received",
        "error",
        "length",
        "sent",
    )

    def __init__(
        self,
        content: StreamReader,
        length: int,
        limit: int | None,
        idle: float,
        check: BodyCheck | None = None,
    ) -> None:
        # The framing the client's body came with: its declared length, or
        # CHUNKED (keygate's upstream head declares the same).
        self.length = length
        self._content = content
        self._limit = limit
        self._idle = idle
        self._check = check
        self._received = 0
        self._held = b""  # the byte kept back while a check is pending
        self._prefetched: list[bytes] | None = None
        self.error: KeygateError | None = None
        self.sent = False  # every byte went upstream

    @property
    def consumed(self) -> bool:
        """Whether a chunk was taken from the client: the body cannot be sent again."""
        return self._received > 0 and self._prefetched is None

    async def prefetch(self) -> None:
        """Read the whole (small) body now and check it before anything is sent."""
        chunks: list[bytes] = []
        while chunk := await self._read():
            chunks.append(chunk)
        check, self._check = self._check, None
        if check is not None:
            self._fail_with(check.whole, b"".join(chunks))
        self._prefetched = chunks

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        prefetched = self._prefetched
        if prefetched is not None:
            if not prefetched:
                raise StopAsyncIteration
            return prefetched.pop(0)
        check = self._check
        if check is None:
            chunk = await self._read()
            if not chunk:
                raise StopAsyncIteration
            return chunk
        while True:
            chunk = await self._read()
            if not chunk:
                self._fail_with(lambda _: check.finish(), b"")
                held, self._held = self._held, b""
                if not held:
                    raise StopAsyncIteration
                return held
            self._fail_with(check.feed, chunk)
            out = self._held + chunk[:-1]
            self._held = chunk[-1:]
            if out:
                return out

    def _fail_with(self, step: Callable[[bytes], None], data: bytes) -> None:
        try:
            step(data)
        except KeygateError as exc:
            self.error = exc
            raise

    async def _read(self) -> bytes:
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
