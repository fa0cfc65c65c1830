"""The store interface. Callers (services, verifier, batcher, change feed) see only this.

Every write method is one transaction that also appends its audit record and
its change notices, so a change is never visible without its audit trail and
never missed by other workers or nodes. A write the store's own rules refuse
raises a ``StoreRefusal`` (``errors.py``) and writes nothing; the services
turn it into the client's 409 (``gateway/service/conflicts.py``).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Protocol

from keygate.gateway.errors import InsufficientStorage, KeygateError
from keygate.gateway.store.health import StoreHealth
from keygate.gateway.store.hookrecords import Claimed, DeliveryRecord, Outcome, Target
from keygate.gateway.store.records import (
    AuditEntry,
    AuditQuery,
    AuditRecord,
    AuthRecord,
    AvatarRecord,
    Change,
    GroupRecord,
    ImportedPage,
    ImportOutcome,
    KeyAuth,
    KeyQuery,
    KeyRecord,
    Page,
    UserRecord,
)

FULL_MESSAGE = "The key store's disk is full: changes cannot be recorded until space is freed."

# Fields of a key that ``update_key`` may write: an allow-list, never a passthrough.
KEY_WRITABLE = frozenset(
    {
        "name",
        "description",
        "groups",
        "expires_at",
        "webhook_url",
        "metadata",
        "status",
        "disabled_by_id",
        "disabled_by_username",
        "disabled_by_admin",
        "expires_by_admin",
        "rate_limits",
        "quota",
        "allowed_ips",
    }
)
# Called by ``update_key`` with the key as it stands inside the write's
# transaction (row-locked in PostgreSQL, under the write lock in SQLite): it
# raises to refuse the change, or returns more fields to write. Rules that
# depend on the key's current state are decided here, never on an earlier read.
KeyCheck = Callable[[KeyRecord], Mapping[str, Any]]
USER_WRITABLE = frozenset({"role", "groups", "status"})
GROUP_WRITABLE = frozenset({"description", "rules"})


class Store(abc.ABC):
    """Persistent users, groups, keys, audit records and change notices."""

    # The migration versions the last ``open()`` applied (``keygate migrate``
    # reports them; a later ``migrate()`` call finds nothing left to do).
    applied_on_open: tuple[int, ...] = ()
    # What this process last saw of the store (``health.py``): each store
    # reports its queries' outcomes there, so outages are logged once. Set by
    # each store's ``__init__``.
    health: StoreHealth

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def migrate(self) -> list[int]:
        """Apply pending schema migrations; return the versions applied."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers a trivial query."""

    async def write_problem(self) -> KeygateError | None:
        """What a write would get now, when something says it would fail: the
        last write found the disk full and none has succeeded since. Its
        message is fixed wording, fit for a public probe (``/ready``)."""
        return InsufficientStorage(FULL_MESSAGE) if self.health.full else None

    # --- verification -------------------------------------------------
    @abc.abstractmethod
    async def auth_lookup(self, digest: bytes) -> AuthRecord | None: ...

    @abc.abstractmethod
    async def auth_lookup_key(self, key_id: str, digest: bytes) -> KeyAuth:
        """``auth_lookup(digest)`` for a token whose key id is ``key_id``, plus every
        digest stored for that key id, in one round trip.

        A token's digest can only ever be stored under the key id written in the
        token (create and roll both keep it), so ``record`` equals what
        ``auth_lookup(digest)`` returns.
        """

    @abc.abstractmethod
    async def key_ids(self) -> list[str]:
        """Every key id that could still authenticate a keygate token (not
        revoked, not imported: an imported token carries no key id; rolling an
        imported key announces its id with a ``key-created`` notice)."""

    # --- keys -----------------------------------------------------------
    @abc.abstractmethod
    async def create_key(
        self,
        key: KeyRecord,
        digest: bytes,
        *,
        max_keys: int,
        audit: AuditEntry,
        webhook_secret: str | None = None,
    ) -> KeyRecord:
        """Insert, unless the owner already holds ``max_keys`` keys that are not
        revoked (KeyLimitReached) or a key with this name ignoring case
        (UniqueViolation ``key_name``); counted and inserted as one step.
        Every key write also appends its webhook event (docs/webhooks.md) in
        its transaction; ``webhook_secret`` is the key's signing secret."""

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    @abc.abstractmethod
    async def list_keys(self, query: KeyQuery) -> Page[KeyRecord]: ...

    @abc.abstractmethod
    async def update_key(
        self,
        key_id: str,
        fields: Mapping[str, Any],
        *,
        audit: AuditEntry,
        check: KeyCheck | None = None,
        webhook_secret: str | None = None,
    ) -> KeyRecord:
        """Write ``fields`` (a subset of KEY_WRITABLE), plus what ``check`` adds;
        ``webhook_secret`` becomes the key's signing secret when it sets a
        ``webhook_url`` and the key has none yet.
        A revoked key is final: KeyRevoked. NotFound when absent; UniqueViolation
        ``key_name`` for a name the owner uses already. Nothing is written (and no
        audit record kept) when ``check`` raises."""

    @abc.abstractmethod
    async def roll_key(
        self,
        key_id: str,
        digest: bytes,
        last4: str,
        *,
        grace_until: datetime | None,
        audit: AuditEntry,
        prefix: str | None = None,
    ) -> KeyRecord:
        """A new digest for the key; the old one keeps working until
        ``grace_until`` (when in the future). With ``prefix`` (an imported
        key getting a keygate token) the key becomes a keygate key with that
        prefix. KeyRevoked, NotFound."""

    @abc.abstractmethod
    async def delete_key(self, key_id: str, *, audit: AuditEntry) -> None:
        """Remove the key, its retired digests and its avatar. NotFound."""

    # --- webhooks (docs/webhooks.md; the SQL is sqlhooks.py) -----------------------
    # True when one process delivers at a time (a lease elects it).
    ONE_DELIVERER: ClassVar[bool] = False

    @abc.abstractmethod
    async def webhook_secrets(
        self, key_id: str
    ) -> tuple[str | None, str | None, datetime | None]: ...

    @abc.abstractmethod
    async def set_webhook_secret(
        self, key_id: str, secret: str, *, overlap_until: datetime | None, audit: AuditEntry
    ) -> None: ...

    @abc.abstractmethod
    async def webhook_gone(self, url: str) -> bool: ...

    @abc.abstractmethod
    async def add_event(self, key_id: str, event: str, actor: dict[str, Any] | None) -> str: ...

    @abc.abstractmethod
    async def list_deliveries(
        self, key_id: str, limit: int, before: int | None, *, targets: Sequence[str]
    ) -> tuple[list[DeliveryRecord], int | None]: ...

    @abc.abstractmethod
    async def redeliver(
        self, key_id: str, delivery_id: str, *, targets: Sequence[str], audit: AuditEntry
    ) -> DeliveryRecord: ...

    @abc.abstractmethod
    async def take_lease(self, name: str, holder: str, ttl: float) -> bool: ...

    @abc.abstractmethod
    async def release_lease(self, name: str, holder: str) -> None: ...

    @abc.abstractmethod
    async def webhook_work(self, now: datetime) -> bool: ...

    @abc.abstractmethod
    async def webhook_backlog(self) -> int:
        """Deliveries waiting (pending) plus events not yet fanned out."""

    @abc.abstractmethod
    async def prune_webhooks(self, before: datetime) -> int: ...

    @abc.abstractmethod
    async def fan_out(self, fan: Callable[[str, str | None], list[Target]]) -> int: ...

    @abc.abstractmethod
    async def claim(
        self, holder: str, now: datetime, hold: float, limit: int
    ) -> list[Claimed]: ...

    @abc.abstractmethod
    async def record_attempt(
        self, claimed: Claimed, holder: str, outcome: Outcome, *, audit: AuditEntry | None
    ) -> None: ...

    @abc.abstractmethod
    async def expiry_notices(self, now: datetime) -> int: ...

    @abc.abstractmethod
    async def traffic_notice(
        self, key_id: str, event: str, cooldown: float, now: datetime
    ) -> bool: ...
    # --- imported keys (docs/reference.md#imported-keys) ----------------------------
    @abc.abstractmethod
    async def held_digests(self, digests: Sequence[bytes]) -> set[bytes]:
        """Those of ``digests`` the store holds, current or rolled away."""

    @abc.abstractmethod
    async def import_keys(
        self,
        keys: Sequence[tuple[KeyRecord, bytes]],
        *,
        audit: Callable[[KeyRecord], AuditEntry],
    ) -> ImportOutcome:
        """Insert imported keys (record, digest of the whole token) as one
        transaction, skipping those whose digest the store holds already; an
        audit record per key written and one change notice for the batch
        (``keys-imported``, its seq span). No key limit applies. UniqueViolation
        ``key_name`` when an owner already has one of the names; then nothing
        is written."""

    @abc.abstractmethod
    async def imported_keys(
        self, after_seq: int, upto_seq: int | None = None, limit: int = 50_000
    ) -> ImportedPage:
        """The digests of imported keys with ``after_seq < seq <= upto_seq``, by
        seq, at most ``limit``."""

    @abc.abstractmethod
    async def key_names(self, owner_id: str) -> set[str]:
        """The case-folded names of the owner's keys."""

    @abc.abstractmethod
    async def count_keys(self, owner_id: str) -> int:
        """The owner's keys that are not revoked."""

    # --- key avatars (docs/admin-api.md#avatars) -------------------------------
    @abc.abstractmethod
    async def put_avatar(
        self, key_id: str, png: bytes, etag: str, *, audit: AuditEntry
    ) -> KeyRecord:
        """Set (or replace) the key's avatar; the key as it now reads. NotFound,
        KeyRevoked."""

    @abc.abstractmethod
    async def get_avatar(self, key_id: str) -> AvatarRecord | None: ...

    @abc.abstractmethod
    async def delete_avatar(self, key_id: str, *, audit: AuditEntry) -> bool:
        """Remove the key's avatar; False (nothing written) when it had none. NotFound."""

    # --- users ----------------------------------------------------------
    @abc.abstractmethod
    async def create_user(self, user: UserRecord, *, audit: AuditEntry | None) -> UserRecord:
        """Insert; UniqueViolation ``username`` when the username is taken."""

    @abc.abstractmethod
    async def get_user(self, username: str) -> UserRecord | None: ...

    @abc.abstractmethod
    async def get_user_by_id(self, user_id: str) -> UserRecord | None: ...

    @abc.abstractmethod
    async def list_users(self, limit: int, after: str | None) -> Page[UserRecord]:
        """Ordered by username; ``after`` is the last username of the previous page."""

    @abc.abstractmethod
    async def update_user(
        self, username: str, fields: Mapping[str, Any], *, audit: AuditEntry
    ) -> UserRecord: ...

    @abc.abstractmethod
    async def delete_user(self, username: str, *, audit: AuditEntry) -> list[str]:
        """Delete the user and revoke their keys; return the revoked key ids."""

    @abc.abstractmethod
    async def count_admins(self) -> int:
        """Active users whose role is admin."""

    # --- groups ---------------------------------------------------------
    @abc.abstractmethod
    async def create_group(self, group: GroupRecord, *, audit: AuditEntry) -> GroupRecord:
        """Insert; UniqueViolation ``group_name`` when the name is taken."""

    @abc.abstractmethod
    async def get_group(self, name: str) -> GroupRecord | None: ...

    @abc.abstractmethod
    async def list_groups(self) -> list[GroupRecord]: ...

    @abc.abstractmethod
    async def update_group(
        self, name: str, fields: Mapping[str, Any], *, audit: AuditEntry
    ) -> GroupRecord: ...

    @abc.abstractmethod
    async def delete_group(self, name: str, *, force: bool, audit: AuditEntry) -> None:
        """GroupInUse when a user or key holds it, unless ``force`` (then it is
        removed from them in the same transaction)."""

    # --- audit, usage, changes -----------------------------------------
    @abc.abstractmethod
    async def list_audit(
        self, limit: int, before_id: int | None, query: AuditQuery | None = None
    ) -> Page[AuditRecord]:
        """Newest first, only records matching every field ``query`` sets."""

    @abc.abstractmethod
    async def touch_last_used(
        self, stamps: Mapping[str, float], resolution: float = 0.0
    ) -> None:
        """Merge epoch-second stamps into ``last_used_at``, never moving it back,
        and leaving alone a row whose stamp is less than ``resolution`` seconds
        older than the new one (``auth.last_used_resolution``): however many
        nodes use a key, its row is written at most once per resolution."""

    @abc.abstractmethod
    async def add_quota_used(
        self, counts: Mapping[tuple[str, str], int]
    ) -> dict[str, tuple[str | None, int]]:
        """Add requests to keys' quota counts, in one transaction: ``counts`` maps
        (key id, window name) to requests. A key whose stored window is that one
        adds to it; one with an older window (or one of the other period, or
        none) starts the new window at the count; a count for a window older
        than the stored one is dropped. Returns each existing key's (window,
        count) after the write."""

    @abc.abstractmethod
    async def change_seq(self) -> int:
        """The newest change notice's sequence number (0 when none)."""

    @abc.abstractmethod
    async def changes_since(self, seq: int) -> list[Change]: ...

    async def data_version(self) -> int | None:
        """A cheap counter that moves whenever any process writes, or None when
        the store has none (then every change-feed check reads the notices)."""
        return None

    def data_version_now(self) -> int | None:
        """``data_version`` read synchronously for a few microseconds on the event
        loop, or None when the store cannot (then ``data_version`` is awaited)."""
        return None

    def listener(self, on_notice: Callable[[], Awaitable[object]]) -> ChangeListener | None:
        """A channel that pushes change notices as they commit (PostgreSQL's
        LISTEN/NOTIFY), calling ``on_notice``; None when the store has none
        (the change feed then relies on polling alone)."""
        return None


class ChangeListener(Protocol):
    """What :meth:`Store.listener` returns: started and stopped by its caller."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def delivers_all(self) -> bool:
        """Whether every commit is pushed now (a live LISTEN): the change poll can
        rest meanwhile. False for best-effort wake-ups."""
        ...
