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
from dataclasses import dataclass
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
MAX_PACKED: Final = 100_000  # keys whose calls' static part is kept packed
FIRST_PAUSE: Final = 0.05  # seconds Redis is left alone after a failure, doubling …
MAX_PAUSE: Final = 1.0  # … up to this
US: Final = 1_000_000
# What a Redis that is down, slow, gone or still loading its data looks like.
UNREACHABLE: Final = (redis_errors.RedisError, OSError, TimeoutError)



@dataclass(slots=True, eq=False)
class Call:
    """One request's script call, waiting for its pipeline."""

    limits: KeyLimits
    now: float
    window: str | None
    command: bytes  # EVALSHA in RESP, a NUL where the script's digest goes (it may change)
    out: asyncio.Future[Usage]


def _bulk(value: bytes) -> bytes:
    """A RESP (Redis serialization protocol) bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


class RedisLimiter(Limiter):
    dependency = "redis"

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
        self._sha: bytes | None = None
        # Each key's static part of its calls, packed once (bounded).
        self._packed: dict[KeyLimits, tuple[bytes, bytes]] = {}
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

    async def reachable(self) -> bool:
        client = self._client
        if client is None:
            return False
        try:
            async with asyncio.timeout(self._timeout):
                await client.ping()
        except UNREACHABLE:
            return False
        return True

    async def stop(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        for call in self._queue:
            if not call.out.done():
                call.out.set_exception(RateLimitUnavailable())
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
        out: asyncio.Future[Usage] = asyncio.get_running_loop().create_future()
        now = self.clock()
        if time.monotonic() < self._paused_until:
            self._fallback(out, limits, now)
            return out
        command, window = self._command(limits, now)
        self._queue.append(Call(limits, now, window, command, out))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send(), name="keygate-ratelimit")
        return out

    def _fallback(self, out: asyncio.Future[Usage], limits: KeyLimits, now: float) -> None:
        if out.done():
            return
        try:
            out.set_result(self._without_redis(limits, now))
        except RateLimitUnavailable as exc:
            out.set_exception(exc)

    # --- one request's script call and its answer ------------------------------------
    def _command(self, limits: KeyLimits, now: float) -> tuple[bytes, str | None]:
        """The EVALSHA in RESP (a NUL for the digest), and the quota window."""
        head, middle = self._static(limits)
        clock = b"" if self.script_clock is None else b"%d" % int(self.script_clock() * US)
        quota = limits.quota
        if quota is None:
            return head + _bulk(clock) + middle + _bulk(b"") + _bulk(b"0"), None
        window, _ = self.window(quota.period, now)
        floor = self.counts.known_total(limits, window)
        tail = _bulk(window.encode()) + _bulk(b"%d" % floor)
        return head + _bulk(clock) + middle + tail, window

    def _static(self, limits: KeyLimits) -> tuple[bytes, bytes]:
        """What every call for a key says: its Redis keys, then its policies."""
        found = self._packed.get(limits)
        if found is not None:
            return found
        # One hash slot per key (Redis Cluster hash tags): {key id}.
        base = f"{self._prefix}:{{{limits.key_id}}}"
        keys = [f"{base}:rl:{p.name}" for p in limits.policies]
        quota = limits.quota
        if quota is not None:
            keys.append(f"{base}:quota")
        args = [b"%d" % len(limits.policies)]
        for p in limits.policies:
            args += (b"%d" % int(p.interval * US), b"%d" % int(p.tolerance * US))
        args += (b"%d" % quota.limit, quota.period.encode()) if quota else (b"0", b"")
        # EVALSHA, digest, key count, keys, now, args, window, floor
        count = 3 + len(keys) + 1 + len(args) + 2
        head = b"*%d\r\n$7\r\nEVALSHA\r\n\x00" % count
        head += _bulk(b"%d" % len(keys)) + b"".join(_bulk(k.encode()) for k in keys)
        middle = b"".join(_bulk(a) for a in args)
        if len(self._packed) >= MAX_PACKED:
            self._packed.clear()
        found = self._packed[limits] = (head, middle)
        return found

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
                for call, reply in zip(batch, replies, strict=True):
                    if call.out.done():
                        continue
                    if isinstance(reply, BaseException):
                        log.error("rate-limit script failed: %s", reply)
                        self._fallback(call.out, call.limits, call.now)
                    else:
                        call.out.set_result(self._usage(call.limits, reply, call.window))
        finally:
            self._sender = None

    async def _run(self, batch: list[Call]) -> list[Any]:
        client = self._client
        if client is None:
            raise redis_errors.ConnectionError("closed")
        if self._sha is None:
            self._sha = _digest(await client.script_load(SCRIPT))
        replies = await self._pipeline(client, batch)
        missing = [i for i, r in enumerate(replies) if isinstance(r, redis_errors.NoScriptError)]
        if missing:  # Redis restarted (or SCRIPT FLUSH): load it again, run those again
            self._sha = _digest(await client.script_load(SCRIPT))
            again = await self._pipeline(client, [batch[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, client: Redis, batch: list[Call]) -> list[Any]:
        """The batch's EVALSHAs written at once on one connection, and their replies
        (an error reply as its exception). Packed here, not by redis-py's pipeline:
        its per-argument encoding was most of a request's cost."""
        assert self._sha is not None
        digest = _bulk(self._sha)
        packed = b"".join(call.command.replace(b"\x00", digest, 1) for call in batch)
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
        for call in batch:
            self._fallback(call.out, call.limits, call.now)


def _digest(sha: Any) -> bytes:
    return sha.encode() if isinstance(sha, str) else bytes(sha)
