"""Typed records exchanged between the store and its callers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from keygate.gateway.limits import windows

T = TypeVar("T")

BUILTIN_GROUPS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "admin": ("The whole admin API.", []),
    "self-service": ("The caller's own keys through the admin API.", []),
    "default": (
        "Every method on every path of every route.",
        [{"route": "*", "methods": ["*"], "paths": ["/**"]}],
    ),
}
ADMIN_GROUP = "admin"
# server.admin_prefix's default: where avatar_url points when no prefix is given.
DEFAULT_ADMIN_PREFIX = "/_keygate"
SELF_SERVICE_GROUP = "self-service"


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, to the second (docs/reference.md, "Conventions")."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    username: str
    role: str  # admin | member
    groups: tuple[str, ...]
    status: str  # active | disabled
    created_at: datetime
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "role": self.role,
            "groups": list(self.groups),
            "status": self.status,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class GroupRecord:
    name: str
    description: str
    rules: tuple[dict[str, Any], ...]
    builtin: bool
    created_at: datetime
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "rules": list(self.rules),
            "builtin": self.builtin,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    prefix: str
    last4: str
    name: str
    description: str
    status: str  # stored status: active | disabled | revoked
    groups: tuple[str, ...]
    owner_id: str
    owner_username: str
    created_by_id: str | None
    created_by_username: str | None
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    webhook_url: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    # Who disabled the key (None while it is active; the CLI has no user id) and
    # whether that caller was an admin: an admin's block is lifted only by an
    # admin (docs/admin-api.md, "Blocks").
    disabled_by_id: str | None = None
    disabled_by_username: str | None = None
    disabled_by_admin: bool = False
    # expires_at was set by an admin: its owner may only bring it forward.
    expires_by_admin: bool = False
    # Limits (docs/reference.md#rate-limits-quotas-and-ip-allowlists): rate
    # limits as {name, limit, window, burst}, the quota as {limit, period},
    # allowed networks normalised; the quota's count in the window it names.
    rate_limits: tuple[dict[str, Any], ...] = ()
    quota: dict[str, Any] | None = None
    allowed_ips: tuple[str, ...] = ()
    quota_used: int = 0
    quota_window: str | None = None
    # The avatar's etag (key_avatars), None when the key has none.
    avatar_etag: str | None = None
    # Taken from another system with its token as the client holds it
    # (docs/reference.md#imported-keys): ``prefix`` then holds the token's first 4
    # characters, or nothing for a token shorter than 32.
    imported: bool = False

    @property
    def display(self) -> str:
        if self.imported:
            return f"{self.prefix}…{self.last4}"
        return f"{self.prefix}_{self.id}_…{self.last4}"

    def effective_status(self, now: datetime | None = None) -> str:
        """``expired`` is computed, never stored (docs/reference.md#statuses)."""
        expires = self.expires_at
        if self.status == "active" and expires is not None and expires <= (now or utcnow()):
            return "expired"
        return self.status

    def avatar_url(self, admin_prefix: str = DEFAULT_ADMIN_PREFIX) -> str | None:
        """Where the avatar is served; ``v`` changes with the image, so a client may
        cache by URL (docs/admin-api.md#avatars)."""
        if self.avatar_etag is None:
            return None
        base = admin_prefix.rstrip("/")
        return f"{base}/api/v1/keys/{self.id}/avatar?v={self.avatar_etag[:16]}"

    def as_json(
        self, now: datetime | None = None, *, admin_prefix: str = DEFAULT_ADMIN_PREFIX
    ) -> dict[str, Any]:
        created_by = None
        if self.created_by_id is not None:
            created_by = {"id": self.created_by_id, "username": self.created_by_username}
        disabled_by = None
        if self.disabled_by_username is not None:
            disabled_by = {"id": self.disabled_by_id, "username": self.disabled_by_username}
        return {
            "id": self.id,
            "display": self.display,
            "name": self.name,
            "description": self.description,
            "status": self.effective_status(now),
            "groups": list(self.groups),
            "owner": {"id": self.owner_id, "username": self.owner_username},
            "created_by": created_by,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
            "last_used_at": rfc3339(self.last_used_at),
            "expires_at": rfc3339(self.expires_at),
            "webhook_url": self.webhook_url,
            "metadata": self.metadata,
            "disabled_by": disabled_by,
            "rate_limits": [dict(p) for p in self.rate_limits],
            "quota": dict(self.quota) if self.quota is not None else None,
            **self.quota_state(now),
            "allowed_ips": list(self.allowed_ips),
            "avatar_url": self.avatar_url(admin_prefix),
        }

    def quota_state(self, now: datetime | None = None) -> dict[str, Any]:
        """``quota_used`` in the current window (as last flushed) and ``quota_resets_at``."""
        if self.quota is None:
            return {"quota_used": None, "quota_resets_at": None}
        at = (now or utcnow()).timestamp()
        name, end = windows.window(self.quota["period"], at)
        return {
            "quota_used": self.quota_used if self.quota_window == name else 0,
            "quota_resets_at": rfc3339(datetime.fromtimestamp(end, UTC)),
        }


@dataclass(frozen=True, slots=True)
class AvatarRecord:
    """A key's avatar: the PNG keygate encoded, never the uploaded bytes."""

    key_id: str
    png: bytes
    etag: str  # hex digest of ``png``
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AuthRecord:
    """Everything verification needs about a digest, read in one query."""

    key_id: str
    key_name: str
    key_status: str
    key_groups: tuple[str, ...]
    expires_at: float | None  # epoch seconds
    owner_id: str
    owner_username: str | None  # None: the owner no longer exists
    owner_role: str | None
    owner_status: str | None
    owner_groups: tuple[str, ...]
    # A rolled-away token keeps working until this epoch time; None for current tokens.
    grace_until: float | None = None
    # The key's limits, as KeyRecord holds them.
    rate_limits: tuple[dict[str, Any], ...] = ()
    quota: dict[str, Any] | None = None
    allowed_ips: tuple[str, ...] = ()
    quota_used: int = 0
    quota_window: str | None = None


@dataclass(frozen=True, slots=True)
class KeyAuth:
    """One key id's answer to a presented token: the token's record, and every
    digest the store holds for that key id, so the next wrong secret for it can
    be refused from memory."""

    record: AuthRecord | None  # what ``auth_lookup`` returns for the presented digest
    # The current digest and any rolled-away one (in its grace or past it): a
    # digest outside this set is unknown to the store. Empty: no key has this id.
    digests: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """What one batch of ``Store.import_keys`` did."""

    imported: list[str]  # the key ids written
    skipped: int  # keys whose digest the store already held
    # The change notice's reference: the first and last ``seq`` written, "a:b".
    span: str | None = None


@dataclass(frozen=True, slots=True)
class ImportedPage:
    """Digests of imported keys in ``seq`` order (``Store.imported_keys``): plain
    bytes, as memory holds them (a million at start-up)."""

    digests: list[bytes]
    last_seq: int  # the seq of the last one; 0 when there is none


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An audit record to be written in the same transaction as its change."""

    action: str  # e.g. key.create, user.update, group.delete
    target_type: str  # key | user | group
    target_id: str
    actor_user_id: str | None = None
    actor_username: str | None = None
    actor_key_id: str | None = None
    client_addr: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: datetime
    action: str
    target_type: str
    target_id: str
    actor_user_id: str | None
    actor_username: str | None
    actor_key_id: str | None
    client_addr: str | None
    changes: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": rfc3339(self.at),
            "action": self.action,
            "target": {"type": self.target_type, "id": self.target_id},
            "actor": {
                "user_id": self.actor_user_id,
                "username": self.actor_username,
                "key_id": self.actor_key_id,
            },
            "client_addr": self.client_addr,
            "changes": self.changes,
        }


@dataclass(frozen=True, slots=True)
class Change:
    """A change notice: evict what depends on (kind, ref). kind: key | user | group."""

    seq: int
    kind: str
    ref: str


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of the audit trail; None matches anything."""

    target_type: str | None = None  # key | user | group
    target_id: str | None = None
    actor: str | None = None  # the actor's username (cli:<os user> for the CLI)


@dataclass(frozen=True, slots=True)
class KeyQuery:
    search: str | None = None
    status: str | None = None  # active | disabled | revoked | expired
    owner_id: str | None = None
    group: str | None = None
    limit: int = 50
    before_seq: int | None = None  # cursor: newest first, strictly older than this


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: int | None
