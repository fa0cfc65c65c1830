"""The ``redis`` backend: one atomic Lua script per request, on Redis's clock.

Exact across every worker and node that share the Redis: the script
(``script.lua``) runs GCRA for each rate limit and counts the quota in one
step, and counts only a request that all of them let through. Requests in
flight together go to Redis in one pipeline (one round trip, one connection):
while a batch is on its way, the next one gathers.

When Redis does not answer within ``ratelimit.redis_timeout`` (or refuses the
connection), the requests of that batch fail open (allowed, logged once,
counted in ``backend_errors``) or closed (503 ``ratelimit_unavailable``),
and Redis is left alone for a short, growing pause (at most
``MAX_PAUSE``) before the next try: keygate reconnects by itself, with no
restart. Quota counts also reach the store (:mod:`.counts`), for the key
record's ``quota_used``; the store's count is the script's floor, so a Redis
that lost its data (a restart without persistence) never hands out a quota
again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from keygate.gateway.errors import RateLimitUnavailable
from keygate.gateway.limits.counts import QuotaCounts
from keygate.gateway.limits.gcra import whole_seconds
from keygate.gateway.limits.limiter import Limiter
from keygate.gateway.limits.rules import QUOTA_POLICY, KeyLimits
from keygate.gateway.limits.usage import Room, Usage, header_fields, usage

log = logging.getLogger("keygate.limits")

SCRIPT: Final = (Path(__file__).with_name("script.lua")).read_text()
MAX_BATCH: Final = 512  # requests in one pipeline
FIRST_PAUSE: Final = 0.05  # seconds Redis is left alone after a failure, doubling …
MAX_PAUSE: Final = 1.0  # … up to this
US: Final = 1_000_000
# What a Redis that is down, slow, gone or still loading its data looks like.
UNREACHABLE: Final = (redis_errors.RedisError, OSError, TimeoutError)

Call = tuple[list[str], list[Any], "asyncio.Future[list[Any]]"]


def _args(keys: list[str], args: list[Any]) -> list[bytes]:
    out = [b"%d" % len(keys)]
    out += [k.encode() for k in keys]
    out += [a.encode() if isinstance(a, str) else b"%d" % a for a in args]
    return out


def _pack(parts: list[bytes]) -> bytes:
    """One command in RESP (the Redis serialization protocol): an array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join(
        b"$%d\r\n%b\r\n" % (len(p), p) for p in parts
    )


class RedisLimiter(Limiter):
    def __init__(
        self,
        counts: QuotaCounts,
        mode: str,
        *,
        url: str,
        prefix: str,
        timeout: float,
        fail_open: bool,
    ) -> None:
        super().__init__(counts, mode)
        self._url = url  # may carry a password: never logged
        self._prefix = prefix
        self._timeout = timeout
        self.fail_open = fail_open
        self._client: Redis | None = None
        self._sha: str | None = None
        self._queue: list[Call] = []
        self._sender: asyncio.Task[None] | None = None
        self._paused_until = 0.0
        self._pause = FIRST_PAUSE
        self._down = False
        self.backend_errors = 0  # requests decided without Redis (metrics read it)
        self.batches = 0
        # Tests drive the script's clock; None: Redis's TIME.
        self.script_clock: Any = None

    async def start(self) -> None:
        self._client = Redis.from_url(
            self._url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),  # a failure is answered at once; the pause retries
            health_check_interval=0,
            decode_responses=False,
        )

    async def stop(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        for _, _, future in self._queue:
            if not future.done():
                future.set_exception(RateLimitUnavailable())
        self._queue = []
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def take_now(self, limits: KeyLimits) -> Usage | None:
        return None  # Redis decides: always awaited

    async def take(self, limits: KeyLimits) -> Usage:
        return await self.take_later(limits)

    def take_later(self, limits: KeyLimits) -> asyncio.Future[Usage]:
        """The request's script call joins the next pipeline; the future resolves
        with its usage (no task per request: the edge waits on it by callback)."""
        loop = asyncio.get_running_loop()
        out: asyncio.Future[Usage] = loop.create_future()
        now = self.clock()
        if time.monotonic() < self._paused_until:
            self._settle(out, limits, now, None, None)
            return out
        keys, args, window = self._call(limits)
        reply: asyncio.Future[list[Any]] = loop.create_future()
        self._queue.append((keys, args, reply))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send(), name="keygate-ratelimit")
        reply.add_done_callback(lambda r: self._settle(out, limits, now, r, window))
        return out

    def _settle(
        self,
        out: asyncio.Future[Usage],
        limits: KeyLimits,
        now: float,
        reply: asyncio.Future[list[Any]] | None,
        window: str | None,
    ) -> None:
        if out.done():
            return
        try:
            if reply is None or reply.cancelled() or reply.exception() is not None:
                out.set_result(self._without_redis(limits, now))
            else:
                out.set_result(self._usage(limits, reply.result(), window))
        except RateLimitUnavailable as exc:
            out.set_exception(exc)

    # --- one request's script call and its answer ------------------------------------
    def _call(self, limits: KeyLimits) -> tuple[list[str], list[Any], str | None]:
        # One hash slot per key (Redis Cluster hash tags): {key id}.
        base = f"{self._prefix}:{{{limits.key_id}}}"
        keys = [f"{base}:rl:{p.name}" for p in limits.policies]
        args: list[Any] = [
            "" if self.script_clock is None else str(int(self.script_clock() * US)),
            len(limits.policies),
        ]
        for p in limits.policies:
            args += (int(p.interval * US), int(p.tolerance * US))
        quota = limits.quota
        window = None
        if quota is None:
            args += (0, "", "", 0)
        else:
            keys.append(f"{base}:quota")
            window, _ = self.window(quota.period, self.clock())
            args += (quota.limit, quota.period, window, self.counts.known_total(limits, window))
        return keys, args, window

    def _usage(self, limits: KeyLimits, reply: Sequence[Any], window: str | None) -> Usage:
        status, name, used, ends = int(reply[0]), reply[1], int(reply[2]), int(reply[3])
        rooms: list[Room] = []
        waits: list[tuple[str, float]] = []
        for i, policy in enumerate(limits.policies):
            allowed, remaining, reset, wait = (int(v) for v in reply[4 + 4 * i : 8 + 4 * i])
            if not allowed:
                waits.append((policy.name, wait / US))
            elif status != 0:  # not counted: as it stood before this request
                remaining += 1
                reset -= int(policy.interval * US)
            rooms.append(Room(policy.name, policy.limit, remaining, whole_seconds(reset / US)))
        quota = limits.quota
        quota_wait = None
        if quota is not None:
            if status == 0:
                # Redis's window is the one counted (a clock apart from ours at midnight).
                self.counts.add(limits.key_id, name.decode() if isinstance(name, bytes) else name)
            elif status == 2:
                quota_wait = ends / US
            left = max(quota.limit - used, 0)
            rooms.append(Room(QUOTA_POLICY, quota.limit, left, whole_seconds(ends / US)))
        return usage(limits, self.mode, self.clock(), rooms, rate_waits=waits,
                     quota_wait=quota_wait)

    def _without_redis(self, limits: KeyLimits, now: float) -> Usage:
        """Redis is unreachable: fail open (allowed, counted for the store) or closed."""
        self.backend_errors += 1
        if not self.fail_open:
            raise RateLimitUnavailable()
        if limits.quota is not None:
            window, _ = self.window(limits.quota.period, now)
            self.counts.add(limits.key_id, window)
        # Only the policies: how much room is left is Redis's to know.
        return Usage(header_fields(limits, self.mode, now, ()))

    # --- batches ---------------------------------------------------------------------
    async def _send(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    replies = await asyncio.wait_for(self._run(batch), self._timeout)
                except UNREACHABLE as exc:
                    self._failed(batch, exc)
                    continue
                self.batches += 1
                if self._down:
                    self._down = False
                    log.warning("rate-limit Redis answers again")
                self._pause = FIRST_PAUSE
                for (_, _, future), reply in zip(batch, replies, strict=True):
                    if future.done():
                        continue
                    if isinstance(reply, BaseException):
                        log.error("rate-limit script failed: %s", reply)
                        future.set_exception(RateLimitUnavailable())
                    else:
                        future.set_result(reply)
        finally:
            self._sender = None

    async def _run(self, batch: list[Call]) -> list[Any]:
        client = self._client
        if client is None:
            raise redis_errors.ConnectionError("closed")
        if self._sha is None:
            self._sha = await client.script_load(SCRIPT)
        replies = await self._pipeline(client, batch)
        missing = [i for i, r in enumerate(replies) if isinstance(r, redis_errors.NoScriptError)]
        if missing:  # Redis restarted (or SCRIPT FLUSH): load it again, run those again
            self._sha = await client.script_load(SCRIPT)
            again = await self._pipeline(client, [batch[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, client: Redis, batch: list[Call]) -> list[Any]:
        """The batch's EVALSHAs written at once on one connection, and their replies
        (an error reply as its exception). Packed here, not by redis-py's pipeline:
        its per-argument encoding was most of a request's cost."""
        assert self._sha is not None
        sha = self._sha.encode() if isinstance(self._sha, str) else self._sha
        packed = b"".join(_pack([b"EVALSHA", sha, *_args(keys, args)]) for keys, args, _ in batch)
        pool = client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            for _ in batch:
                try:
                    replies.append(await conn.read_response())
                except redis_errors.ResponseError as exc:  # this script's, not the connection's
                    replies.append(exc)
        except BaseException:
            await conn.disconnect()  # replies may be left unread: never reuse it
            raise
        finally:
            await pool.release(conn)
        return replies

    def _failed(self, batch: list[Call], exc: BaseException) -> None:
        self._sha = None  # a restarted Redis has forgotten the script
        self._paused_until = time.monotonic() + self._pause
        self._pause = min(self._pause * 2, MAX_PAUSE)
        if not self._down:
            self._down = True
            action = "letting requests through" if self.fail_open else "answering 503"
            log.error(
                "rate-limit Redis unreachable (%s): %s until it answers again",
                type(exc).__name__,
                action,
            )
        for _, _, future in batch:
            if not future.done():
                future.set_exception(RateLimitUnavailable())
