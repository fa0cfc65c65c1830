"""Token → Principal: format check, digest, cache, store, status rules.

The outcomes are docs/reference.md#the-proxy, step 7.

``cached`` is the hot path: pure, synchronous, no store. Only a miss
awaits the store, and its answer is cached (positive or negative).

Refusals cost no store query once memory knows enough: a key id that no key
has (``KeyIdSet``), or a real key id whose digests are all known and do not
include the token's (``KeyCache.key_digests``). Memory can lag the store by
the time a change notice takes to arrive, so such a refusal also needs a
change-feed catch-up that started at most ``catch_up_window`` before the
request: a key created or rolled elsewhere before that is already applied.

A token that is not keygate-formatted may be an imported key's
(docs/reference.md#imported-keys): found by its digest alone. When the store
holds imported keys, their digests are in memory (``ImportedDigests``): a
digest not among them is refused like a forged key id, after the same
catch-up rule; one among them is asked of the store. With no imported keys,
such a token is refused by its format, as it always was.

While the store does not answer, a cached key past ``cache_ttl`` is still
admitted for ``auth.stale_if_error`` seconds more (``KeyCache.stale``), with
the same status checks; each such answer is counted (``stale_served``, and
in the store's health, whose recovery line reports it) and the first one of
an outage is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from keygate.gateway.auth import keyformat
from keygate.gateway.auth.cache import KeyCache, Principal, principal_from
from keygate.gateway.auth.imported import ImportedDigests
from keygate.gateway.auth.keyids import KeyIdSet
from keygate.gateway.auth.usage import UsageRecorder
from keygate.gateway.errors import StoreUnavailable, Unauthorized, key_disabled, key_expired
from keygate.gateway.store.base import Store

log = logging.getLogger("keygate.verify")
# A refusal from memory (a key id missing from the in-memory set, or a digest
# its key does not have) needs a change-feed check that started at most this
# long before the request: under a flood of forged tokens the store sees at most
# ~50 trivial queries a second, not one per request.
CATCH_UP_WINDOW = 0.02
# The same rule for tokens of other formats, with a wider window: imports are
# bulk loads done ahead of a cut-over, and an unknown token of another format
# is what a flood sends; so at most ~20 checks a second under such a flood
# (each is a thread hop on SQLite), and a key imported elsewhere is admitted
# by every process from 0.1 s after its batch committed.
IMPORTED_CATCH_UP_WINDOW = 0.1


def _invalid() -> Unauthorized:
    return Unauthorized("The API key is not valid.", code="invalid_api_key")


def check_status(principal: Principal, now: float) -> None:
    """Raise the 401 (docs/reference.md#statuses) unless the key may authenticate at ``now``."""
    if principal.key_status == "revoked" or not principal.owner_active:
        raise _invalid()
    if principal.grace_until is not None and principal.grace_until <= now:
        raise _invalid()
    if principal.key_status == "disabled":
        raise key_disabled()
    if principal.expires_at is not None and principal.expires_at <= now:
        raise key_expired()


class Verifier:
    """Token → principal for both front ends.

    ``key_ids`` (every key id the store holds, kept current by change notices)
    and ``catch_up`` (apply pending notices now) let refusals come from
    memory; without them every unknown token is asked of the store.
    """

    def __init__(
        self,
        store: Store,
        cache: KeyCache,
        usage: UsageRecorder,
        key_prefix: str,
        *,
        key_ids: KeyIdSet | None = None,
        catch_up: Callable[[], Awaitable[None]] | None = None,
        imported: ImportedDigests | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.usage = usage
        self.prefix = key_prefix
        self.lookups = 0  # store queries for verification, by digest or key id (tests count them)
        self.hits = 0  # cache hits (keygate_key_cache_lookups_total{result="hit"})
        # Requests admitted on a cached key past cache_ttl while the store did
        # not answer (auth.stale_if_error).
        self.stale_served = 0
        self.key_ids = key_ids
        self.catch_up = catch_up
        # None: imported keys are not looked for (tools, tests).
        self.imported = imported
        # Instance settings so tests can drive the coverage rule deterministically.
        self.catch_up_window = CATCH_UP_WINDOW
        self.imported_window = IMPORTED_CATCH_UP_WINDOW
        self.clock: Callable[[], float] = time.monotonic
        self._key_id_at = len(key_prefix) + 1
        self._catching_up: asyncio.Future[None] | None = None
        self._caught_up_at = float("-inf")  # when the newest catch-up started
        # When the newest catch-up that completed started: every notice committed
        # before then has been applied to memory.
        self._covered_since = float("-inf")

    def key_id_of(self, token: str) -> str:
        """The key id of a token that passed the format check."""
        return token[self._key_id_at : self._key_id_at + keyformat.KEY_ID_LEN]

    def cached(self, token: str) -> tuple[bytes, Principal | None]:
        """(digest, the verified principal on a cache hit), raising on a refused key.

        The hot path of both front ends. The format check runs only on a miss:
        a digest found in the cache is a token that passed it when it was
        loaded, and a typo still never reaches the store.
        """
        if not token.isascii():
            raise keyformat.TokenFormatError  # neither kind of token: no digest of it
        digest = keyformat.digest(token)
        principal = self.cache.get(digest)
        if principal is None:
            if keyformat.well_formed(token, self.prefix):
                self._check_miss(digest, token)
            else:
                self._check_imported_miss(digest, token)
            return digest, None
        self.hits += 1
        return digest, self._admit(principal)

    def _check_imported_miss(self, digest: bytes, token: str) -> None:
        """As :meth:`_check_miss`, for a token that is not keygate-formatted.

        Its shape is not checked here: a digest in the set is one of a token an
        import accepted (16-256 visible ASCII), so membership alone decides.
        """
        imported = self.imported
        if not imported:
            raise keyformat.TokenFormatError
        if digest in imported:
            # A deleted imported key's digest stays in the set: the store's "no"
            # is remembered like any other unknown digest.
            if self.cache.is_known_unknown(digest):
                raise _invalid()
            return
        now = self.clock()
        window = self.imported_window
        if not self._covered(now, window):
            return  # load() catches up first
        self._refresh_early(now, window)
        raise _invalid()

    def _check_miss(self, digest: bytes, token: str) -> None:
        """Raise on a cache miss that memory alone can refuse; return to ask the store."""
        if self.cache.is_known_unknown(digest):
            raise _invalid()
        if self._unknown_in_memory(digest, token):
            # Not remembered as unknown: the refusal is only as fresh as the
            # last catch-up, and a token rolled elsewhere inside that window
            # must work on the next try, not after negative_cache_ttl.
            raise _invalid()

    def _admit(self, principal: Principal) -> Principal:
        """A cached principal that may authenticate now (else the precise 401)."""
        now = time.time()
        expires = principal.expires_at
        if not principal.usable or (expires is not None and expires <= now):
            check_status(principal, now)
        self.usage.touch(principal.key_id, now)
        return principal

    def _unknown_in_memory(self, digest: bytes, token: str) -> bool:
        key_id = self.key_id_of(token)
        key_ids = self.key_ids
        if key_ids is None or key_id in key_ids:
            digests = self.cache.key_digests(key_id)
            if digests is None or digest in digests:
                return False
        now = self.clock()
        if not self._covered(now):
            return False
        self._refresh_early(now)
        return True

    def _refresh_early(self, now: float, window: float | None = None) -> None:
        """Under a stream of refusals from memory (a flood of forged keys), start
        the next catch-up in the background once the last covering one is half
        a window old, so coverage never lapses and refusals stay synchronous:
        at most two cheap change-feed checks a window, however many requests."""
        if window is None:
            window = self.catch_up_window
        if self.catch_up is None or self._covered_since >= now - window / 2:
            return
        task = self._catching_up
        if task is not None and not task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the event loop (tools, tests)
            return
        self._caught_up_at = now
        task = self._catching_up = loop.create_task(self._run_catch_up(now))
        task.add_done_callback(_retrieve)

    def _covered(self, arrived: float, window: float | None = None) -> bool:
        """Whether memory holds every change committed up to ``window`` (default
        ``catch_up_window``) before ``arrived`` (with no change feed, memory is
        all there is)."""
        if window is None:
            window = self.catch_up_window
        return self.catch_up is None or self._covered_since >= arrived - window

    async def load(self, digest: bytes, token: str | None = None) -> Principal:
        """The miss path: one store lookup, then the same checks as a hit.

        With ``token``, a key id that no key has, or a digest that the key's
        known digests do not include, is refused from memory after a catch-up.
        When the store does not answer, a cached entry past its TTL may still
        answer (``auth.stale_if_error``).
        """
        try:
            return await self._load(digest, token)
        except StoreUnavailable:
            principal = self.cache.stale(digest)
            if principal is None:
                raise
            self._note_stale()
            return self._admit(principal)

    def _note_stale(self) -> None:
        self.stale_served += 1
        health = self.store.health
        if health.stale_answers == 0:
            log.warning(
                "store unreachable: admitting cached keys past auth.cache_ttl for up to "
                "%.0f s more (auth.stale_if_error); a change made meanwhile elsewhere is "
                "not seen until the store answers",
                self.cache.stale_if_error,
            )
        health.stale_answers += 1

    async def _load(self, digest: bytes, token: str | None) -> Principal:
        if token is None:
            generation = self.cache.generation
            self.lookups += 1
            record = await self.store.auth_lookup(digest)
        elif not keyformat.well_formed(token, self.prefix):
            await self._refuse_imported(digest)
            generation = self.cache.generation
            self.lookups += 1
            record = await self.store.auth_lookup(digest)
        else:
            key_id = self.key_id_of(token)
            await self._refuse_from_memory(digest, key_id)
            # Taken after the catch-up: what it applied is older than the read
            # below, so only a notice arriving during the read discards the fill.
            generation = self.cache.generation
            key_generation = self.cache.key_generation
            self.lookups += 1
            found = await self.store.auth_lookup_key(key_id, digest)
            self.cache.put_key_digests(key_id, found.digests, key_generation)
            record = found.record
        if record is None:
            self.cache.remember_unknown(digest, generation)
            raise _invalid()
        principal = principal_from(record, self.cache.ttl)
        self.cache.put(digest, principal, generation)
        check_status(principal, time.time())
        self.usage.touch(principal.key_id)
        return principal

    async def _refuse_imported(self, digest: bytes) -> None:
        """Raise unless ``digest`` may be an imported key's that the store holds."""
        imported = self.imported
        if not imported:
            raise keyformat.TokenFormatError
        if digest not in imported:
            await self._catch_up(self.clock())
            if digest not in imported:
                raise _invalid()  # not remembered: see _check_miss

    async def _refuse_from_memory(self, digest: bytes, key_id: str) -> None:
        """Raise when memory, caught up with the change feed, knows the store
        would not find ``digest``; return when only the store can tell."""
        arrived = self.clock()
        key_ids = self.key_ids
        if key_ids is not None and key_id not in key_ids:
            await self._catch_up(arrived)
            if key_id not in key_ids:
                # Decided on memory as it is now, after the catch-up.
                self.cache.remember_unknown(digest, self.cache.generation)
                raise _invalid()
        digests = self.cache.key_digests(key_id)
        if digests is not None and digest not in digests:
            # A roll elsewhere may not be applied yet; the catch-up evicts the
            # set if so, and the store is asked below.
            await self._catch_up(arrived)
            digests = self.cache.key_digests(key_id)
            if digests is not None and digest not in digests:
                raise _invalid()  # not remembered: see _check_miss

    async def verify(self, token: str) -> Principal:
        digest, principal = self.cached(token)
        if principal is None:
            principal = await self.load(digest, token)
        return principal

    async def _catch_up(self, arrived: float) -> None:
        """Apply pending change notices (a key created or rolled a moment ago elsewhere).

        One check at a time; concurrent misses share it when it started at most
        ``catch_up_window`` before they arrived, and wait for it to finish.
        """
        if self.catch_up is None:
            return
        while True:
            task = self._catching_up
            if self._caught_up_at >= arrived - self.catch_up_window:
                # Started late enough to cover this request: its result counts
                # only once it is in memory.
                if task is not None and not task.done():
                    await asyncio.shield(task)
                return
            if task is None or task.done():
                # Never await a finished future here: it would not yield, and
                # the loop would spin with the event loop blocked.
                started = self._caught_up_at = self.clock()
                task = self._catching_up = asyncio.ensure_future(self._run_catch_up(started))
            await asyncio.shield(task)

    async def _run_catch_up(self, started: float) -> None:
        assert self.catch_up is not None
        await self.catch_up()
        self._covered_since = max(self._covered_since, started)


def _retrieve(task: asyncio.Task[None]) -> None:
    """A background catch-up that failed covers nothing; the next miss tries again."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("change-feed catch-up failed: %s", type(task.exception()).__name__)
