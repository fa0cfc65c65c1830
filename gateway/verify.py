"""Token → Principal: format check, digest, cache, store, status rules (SPEC §5.3).

``check_cached`` is the hot path: pure, synchronous, no store. Only a miss
awaits the store, and its answer is cached (positive or negative).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from . import keyformat
from .cache import KeyCache, Principal, principal_from
from .errors import StoreUnavailable, Unauthorized, key_disabled, key_expired
from .keyids import KeyIdSet
from .store.base import Store
from .usage import UsageRecorder

log = logging.getLogger("keygate.verify")
# While the store is down, say so at most this often (seconds).
OUTAGE_LOG_INTERVAL = 10.0
# A key id missing from the in-memory set triggers a change-feed check, unless
# one started this recently before the request: under a flood of forged ids the
# store sees at most ~50 trivial queries a second, not one per request.
CATCH_UP_WINDOW = 0.02



def check_status(principal: Principal, now: float) -> None:
    """Raise the 401 of SPEC §5.3 unless the key may authenticate at ``now``."""
    if principal.key_status == "revoked" or not principal.owner_active:
        raise Unauthorized("The API key is not valid.", code="invalid_api_key")
    if principal.grace_until is not None and principal.grace_until <= now:
        raise Unauthorized("The API key is not valid.", code="invalid_api_key")
    if principal.key_status == "disabled":
        raise key_disabled()
    if principal.expires_at is not None and principal.expires_at <= now:
        raise key_expired()


class Verifier:
    def __init__(
        self, store: Store, cache: KeyCache, usage: UsageRecorder, key_prefix: str
    ) -> None:
        self.store = store
        self.cache = cache
        self.usage = usage
        self.prefix = key_prefix
        self.lookups = 0  # store lookups performed (tests count them)
        self._outage_logged = 0.0
        # Known key ids and how to catch up with the change feed; set by the app.
        self.key_ids: KeyIdSet | None = None
        self.catch_up: Callable[[], Awaitable[None]] | None = None
        self._catching_up: asyncio.Future[None] | None = None
        self._caught_up_at = float("-inf")

    def digest_of(self, token: str) -> bytes:
        """Format and checksum first: a typo never reaches cache or store."""
        keyformat.check_format(token, self.prefix)
        return keyformat.digest(token)

    def check_cached(self, digest: bytes) -> Principal | None:
        """The verified principal on a cache hit (raises on a refused key), else None."""
        principal = self.cache.get(digest)
        if principal is None:
            if self.cache.is_known_unknown(digest):
                raise Unauthorized("The API key is not valid.", code="invalid_api_key")
            return None
        now = time.time()
        expires = principal.expires_at
        if not principal.usable or (expires is not None and expires <= now):
            check_status(principal, now)  # raises the precise 401
        self.usage.touch(principal.key_id, now)
        return principal

    async def load(self, digest: bytes, token: str | None = None) -> Principal:
        """The miss path: one store lookup, then the same checks as a hit.

        With ``token``, a key id that no key has is refused from memory.
        """
        generation = self.cache.generation
        if token is not None and self.key_ids is not None:
            start = len(self.prefix) + 1
            key_id = token[start : start + keyformat.KEY_ID_LEN]
            if key_id not in self.key_ids:
                await self._catch_up(time.monotonic())
                if key_id not in self.key_ids:
                    self.cache.remember_unknown(digest, generation)
                    raise Unauthorized("The API key is not valid.", code="invalid_api_key")
        self.lookups += 1
        try:
            record = await self.store.auth_lookup(digest)
        except StoreUnavailable:
            now = time.monotonic()
            if now - self._outage_logged >= OUTAGE_LOG_INTERVAL:
                self._outage_logged = now
                log.error(
                    "key store unavailable: serving cached keys only (%d cached); "
                    "uncached keys get 503 store_unavailable",
                    len(self.cache),
                )
            raise
        if record is None:
            self.cache.remember_unknown(digest, generation)
            raise Unauthorized("The API key is not valid.", code="invalid_api_key")
        principal = principal_from(record, self.cache.ttl)
        self.cache.put(digest, principal, generation)
        check_status(principal, time.time())
        self.usage.touch(principal.key_id)
        return principal

    async def verify(self, token: str) -> Principal:
        digest = self.digest_of(token)
        principal = self.check_cached(digest)
        if principal is None:
            principal = await self.load(digest, token)
        return principal

    async def _catch_up(self, arrived: float) -> None:
        """Apply pending change notices (a key created a moment ago elsewhere).

        One check at a time; concurrent misses share it when it started at most
        CATCH_UP_WINDOW before they arrived.
        """
        if self.catch_up is None:
            return
        while self._caught_up_at < arrived - CATCH_UP_WINDOW:
            task = self._catching_up
            if task is None or task.done():
                # Never await a finished future here: it would not yield, and
                # the loop would spin with the event loop blocked.
                self._caught_up_at = time.monotonic()
                task = self._catching_up = asyncio.ensure_future(self.catch_up())
            await asyncio.shield(task)
