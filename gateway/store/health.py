"""What this process last saw of its store: answering or not, taking writes or full.

Every store operation reports here (``SQLiteStore`` and ``PostgresStore`` do
it where they touch the database), so a state change is logged exactly once —
one line when the store stops answering, one when it answers again; one when
its disk fills, one when a write succeeds again — however many requests,
retries and background loops (change feed, last-used batcher, the pool's own
reconnects) run into it meanwhile. Their tracebacks go to debug.

``/ready`` reads the same state (``admin/handlers/health.py``). Nothing is
logged until ``reporting`` is set — the gateway sets it once it has started —
so a command or a start-up that fails says so in its own one line instead.
"""

from __future__ import annotations

import logging
import time

from yarl import URL

from keygate.gateway.errors import KeygateError, StoreUnavailable

log = logging.getLogger("keygate.store")


def redact_url(url: str) -> str:
    """A store URL fit for a log line: its password, if any, replaced."""
    try:
        parsed = URL(url)
    except ValueError:
        return "<store url>"
    return str(parsed.with_password("***")) if parsed.password else url


def explain(exc: KeygateError, store: str) -> str:
    """An operator's sentence for a failure (CLI, start-up): a bare "the store is
    unavailable" gains the store's name and the database's own reason."""
    if (
        isinstance(exc, StoreUnavailable)
        and exc.message == StoreUnavailable.default_message
        and exc.__cause__ is not None
    ):
        return f"The store {store} failed ({describe(exc)})."
    return exc.message


def describe(exc: BaseException) -> str:
    """One line naming what failed: the database's own words where there are any."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    text = " ".join(str(cause).split()) or "no answer in time"
    return f"{type(cause).__name__}: {text}"


class StoreHealth:
    """The store's state as this process saw it last; logs each change once."""

    def __init__(self, name: str) -> None:
        self.name = name  # how log lines name the store (a URL without password, a path)
        self.down_since: float | None = None  # monotonic, while no query gets an answer
        self.down_reason = ""
        self.full_since: float | None = None  # monotonic, since a write found no space
        self.full_reason = ""
        # Requests let through on cached keys past cache_ttl during the current
        # outage (auth.stale_if_error); reported, and reset, when it ends.
        self.stale_answers = 0
        self.reporting = False
        self.errors = 0  # queries that failed or found no space (keygate_store_errors_total)

    @property
    def down(self) -> bool:
        return self.down_since is not None

    @property
    def full(self) -> bool:
        return self.full_since is not None

    def failed(self, exc: BaseException) -> None:
        """A query got no answer (connection refused or lost, timeout, I/O error)."""
        self.errors += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.down_reason = describe(exc)
            if self.reporting:
                log.error(
                    "store %s unreachable (%s): cached keys keep working, uncached "
                    "keys and admin calls get 503 until it answers",
                    self.name,
                    self.down_reason,
                )
        log.debug("store %s: query failed", self.name, exc_info=exc)

    def answered(self) -> None:
        """A query got its answer."""
        since = self.down_since
        if since is None:
            return
        self.down_since = None
        stale, self.stale_answers = self.stale_answers, 0
        if not self.reporting:
            return
        log.warning(
            "store %s answers again after %.1f s%s",
            self.name,
            time.monotonic() - since,
            f"; {stale} requests were let through on cached keys past auth.cache_ttl "
            "(auth.stale_if_error)"
            if stale
            else "",
        )

    def no_space(self, exc: BaseException) -> None:
        """A write found the store's disk full (nothing was written)."""
        self.errors += 1
        if self.full_since is None:
            self.full_since = time.monotonic()
            self.full_reason = describe(exc)
            if self.reporting:
                log.error(
                    "store %s is out of space (%s): writes get 507 insufficient_storage "
                    "until space is freed; reads and the proxy keep working",
                    self.name,
                    self.full_reason,
                )
        log.debug("store %s: write found no space", self.name, exc_info=exc)

    def wrote(self) -> None:
        """A write committed."""
        self.answered()
        self.space_back("a write succeeded")

    def space_back(self, how: str) -> None:
        since = self.full_since
        if since is None:
            return
        self.full_since = None
        if not self.reporting:
            return
        log.warning(
            "store %s takes writes again after %.1f s (%s)",
            self.name,
            time.monotonic() - since,
            how,
        )
