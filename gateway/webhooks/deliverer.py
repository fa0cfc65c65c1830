"""The deliverer: a background task that sends the outbox's events (docs/webhooks.md).

It runs in every worker of every node, off the request path (a
``cleanup_ctx`` of ``http/app.py``); the store makes each delivery one
process's at a time: on SQLite one process holds a lease and delivers, on
PostgreSQL every process claims with ``FOR UPDATE SKIP LOCKED``. A loop pass
writes due expiry notices, fans new events out into deliveries, claims what
is due and starts one attempt per claim, at most ``MAX_IN_FLIGHT`` at once.

An attempt is a POST with the Standard Webhooks headers, through a session
whose resolver refuses non-global addresses (``resolver.py``), never
following a redirect, reading at most 1 KiB of the answer. No log line names
a URL (it may carry a receiver's token in its query) or a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import timedelta

import aiohttp
from aiohttp import hdrs
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from yarl import URL

from keygate import __version__
from keygate.config.settings import WebhookSettings
from keygate.gateway import background
from keygate.gateway.errors import KeygateError
from keygate.gateway.metrics.counts import Counts
from keygate.gateway.store.base import Store
from keygate.gateway.store.hookrecords import RESPONSE_KEPT, Claimed, Outcome, Target
from keygate.gateway.store.records import AuditEntry, utcnow
from keygate.gateway.webhooks import events, schedule, signing, ssrf
from keygate.gateway.webhooks.resolver import GuardedResolver, RefusedAddress

log = logging.getLogger("keygate.webhooks")

LEASE = "deliverer"
LEASE_TTL = 10.0  # seconds; renewed every pass, so a dead holder is replaced this fast
CLAIM_MARGIN = 5.0  # seconds past the timeout a claim outlives its attempt
MAX_IN_FLIGHT = 32
CLAIM_BATCH = 32
# Polls between two looks for keys about to expire (30 s at the default poll).
EXPIRY_EVERY = 30
USER_AGENT = f"keygate-webhooks/{__version__}"
# Ended deliveries (and events with none left) are kept this long for the
# deliveries list, then pruned, once an hour (docs/webhooks.md#delivery).
RETENTION = timedelta(days=30)
PRUNE_EVERY = 3600.0  # seconds
# Polls between two counts of the backlog for the metrics' queue depth.
BACKLOG_EVERY = 5
# keygate_webhook_deliveries_total's result label, by an attempt's outcome.
RESULTS = {"delivered": "delivered", "retry": "failed", "gone": "gone", "abandoned": "abandoned"}


def holder_id() -> str:
    """Who claims: unique per process and start."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Deliverer:
    def __init__(
        self,
        store: Store,
        settings: WebhookSettings,
        *,
        resolver: AbstractResolver | None = None,
        counts: Counts | None = None,
    ) -> None:
        self.store = store
        self.counts = counts  # the metrics, when they are on
        self.settings = settings
        self.holder = holder_id()
        self._resolver = resolver
        self._expiry_every = EXPIRY_EVERY * settings.poll_interval
        self._backlog_every = BACKLOG_EVERY * settings.poll_interval
        self._last_expiry = float("-inf")
        self._bell = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._endpoint_secrets = {e.url: e.secret for e in settings.endpoints}
        self._failing = False
        self.passes = 0  # loop passes done (tests wait for the first)
        self._renew_at = float("-inf")
        self._prune_at = float("-inf")
        self._backlog_at = float("-inf")
        self._bell_rang = True

    # --- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        guarded = GuardedResolver(
            self._resolver or DefaultResolver(), allow_private=self.settings.allow_private
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=guarded, use_dns_cache=False, limit=64),
            # A receiver's cookies are not ours to keep; nothing is decoded but
            # the 1 KiB we keep.
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={hdrs.USER_AGENT: USER_AGENT},
        )
        self._task = asyncio.create_task(self._run(), name="webhook deliverer")

    async def stop(self) -> None:
        await background.stop(self._task)
        self._task = None
        for task in list(self._in_flight):
            task.cancel()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self.store.ONE_DELIVERER:
            with contextlib.suppress(KeygateError, OSError):  # else it expires on its own
                await self.store.release_lease(LEASE, self.holder)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def ring(self) -> None:
        """Something was written: look now rather than at the next poll."""
        self._bell_rang = True
        self._bell.set()

    # --- the loop --------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            busy = False
            try:
                busy = await self.tick()
                self.passes += 1
                if self._failing:
                    log.info("webhook deliveries resumed")
                    self._failing = False
            except (KeygateError, OSError) as exc:
                self._renew_at = float("-inf")
                if not self._failing:
                    log.warning("webhook deliveries paused: %s", type(exc).__name__)
                    self._failing = True
            except Exception:
                log.exception("webhook deliverer pass failed")
            if busy:
                await asyncio.sleep(0)
                continue
            self._bell.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
            # a cancellation that arrives as the bell rings (bpo-42130),
            # and stop() would wait for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_interval):
                    await self._bell.wait()

    async def tick(self) -> bool:
        """One pass; whether it found work (then the next pass comes at once)."""
        store = self.store
        clock = time.monotonic()
        if store.ONE_DELIVERER and clock >= self._renew_at:
            if not await store.take_lease(LEASE, self.holder, LEASE_TTL):
                return False
            # Renewed well before it ends; a holder that died is replaced
            # LEASE_TTL after its last renewal.
            self._renew_at = clock + LEASE_TTL / 3
        busy = False
        if clock >= self._prune_at:
            self._prune_at = clock + PRUNE_EVERY
            await store.prune_webhooks(utcnow() - RETENTION)
        counts = self.counts
        if counts is not None and clock >= self._backlog_at:
            self._backlog_at = clock + self._backlog_every
            counts.webhook_backlog = await store.webhook_backlog()
        if clock - self._last_expiry >= self._expiry_every:
            self._last_expiry = clock
            busy = await store.expiry_notices(utcnow()) > 0
        if not busy and not self._bell_rang and not await store.webhook_work(utcnow()):
            return False  # idle: one read, no write lock taken
        self._bell_rang = False
        busy = await store.fan_out(self._fan) > 0 or busy
        room = MAX_IN_FLIGHT - len(self._in_flight)
        if room <= 0:
            return False
        hold = self.settings.timeout + CLAIM_MARGIN
        claimed = await store.claim(self.holder, utcnow(), hold, min(room, CLAIM_BATCH))
        for c in claimed:
            task = asyncio.create_task(self._attempt(c))
            self._in_flight.add(task)
            task.add_done_callback(self._done)
        return busy or bool(claimed)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._bell.set()  # the key's next event may be due now

    def _fan(self, event: str, url: str | None) -> list[Target]:
        targets = [Target("key", url)] if url else []
        if event != events.TEST:
            targets += [
                Target("endpoint", e.url)
                for e in self.settings.endpoints
                if events.matches(e.events, event)
            ]
        return targets

    # --- one attempt -------------------------------------------------------------------
    async def _attempt(self, claimed: Claimed) -> None:
        try:
            outcome = await self._send(claimed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never a lost claim: it is written as a failure
            outcome = self._failed(claimed, None, f"internal error ({type(exc).__name__})", None)
        counts = self.counts
        if counts is not None:
            label = (claimed.event, RESULTS[outcome.result])
            counts.webhooks[label] = counts.webhooks.get(label, 0) + 1
        audit = None
        if outcome.result == "gone":
            audit = AuditEntry(
                action="webhook.gone",
                target_type="key",
                target_id=claimed.key_id,
                actor_user_id=None,
                actor_username="keygate",
                actor_key_id=None,
                client_addr=None,
                changes={"target": claimed.target, "delivery": claimed.id},
            )
            log.warning(
                "webhook receiver answered 410: no more deliveries to it (key %s, delivery %s)",
                claimed.key_id,
                claimed.id,
            )
        try:
            await self.store.record_attempt(claimed, self.holder, outcome, audit=audit)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The claim expires and the delivery is tried again: at least once.
            log.warning("webhook attempt not recorded (%s): %s", claimed.id, type(exc).__name__)

    async def _send(self, claimed: Claimed) -> Outcome:
        settings = self.settings
        problem = ssrf.url_problem(claimed.url, allow_http=settings.allow_http)
        if problem is None:
            host = URL(claimed.url).raw_host or ""
            problem = ssrf.host_problem(host, allow_private=settings.allow_private)
        if problem is not None:
            return self._failed(claimed, None, f"refused: the URL {problem}", None)
        keys = (
            claimed.secrets
            if claimed.target == "key"
            else tuple(s for s in [self._endpoint_secrets.get(claimed.url)] if s)
        )
        if not keys:
            return self._failed(claimed, None, "no webhook secret to sign with", None)
        stamp = int(time.time())
        headers = signing.headers(keys, claimed.event_id, stamp, claimed.body)
        headers[hdrs.CONTENT_TYPE] = "application/json"
        assert self._session is not None
        try:
            async with self._session.post(
                claimed.url,
                data=claimed.body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=settings.timeout),
                auto_decompress=False,
            ) as response:
                kept = await _read_some(response.content, RESPONSE_KEPT)
                status = response.status
                retry = schedule.retry_after(response.headers.get(hdrs.RETRY_AFTER), time.time())
        except TimeoutError:
            return self._failed(claimed, None, f"no answer within {settings.timeout:g} s", None)
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error
            if isinstance(cause, RefusedAddress):
                return self._failed(claimed, None, f"refused: {cause}", None)
            reason = cause.strerror or "error"
            return self._failed(claimed, None, f"cannot connect ({reason})", None)
        except aiohttp.ClientError as exc:
            return self._failed(claimed, None, f"failed ({type(exc).__name__})", None)
        text = kept.decode("utf-8", "replace")
        if 200 <= status < 300:
            return Outcome("delivered", status=status, response=text)
        if status == 410:
            return Outcome("gone", status=status, response=text, error="410 Gone: stopped")
        error = f"answered {status}"
        if 300 <= status < 400:
            error += " (redirects are not followed)"
        return self._failed(claimed, status, error, retry, text)

    def _failed(
        self,
        claimed: Claimed,
        status: int | None,
        error: str,
        retry_after: float | None,
        response: str | None = None,
    ) -> Outcome:
        delay = schedule.next_delay(self.settings.retry_schedule, claimed.attempts, retry_after)
        if delay is None:
            return Outcome("abandoned", status=status, error=error, response=response)
        return Outcome(
            "retry",
            status=status,
            error=error,
            response=response,
            next_attempt_at=utcnow() + timedelta(seconds=delay),
        )


async def _read_some(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """At most ``limit`` bytes of a body; the rest is never read."""
    data = b""
    while len(data) < limit:
        chunk = await stream.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data


Ring = Callable[[], None]
