"""Event names, filters and the body every receiver gets (pure).

The body is the Standard Webhooks envelope: ``{"type", "timestamp", "data"}``
with ``data`` the key record and who acted. It is written to the outbox with
the change, so every attempt sends the same bytes (the signature covers them).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

import orjson

from keygate.gateway.store.records import KeyRecord, rfc3339

CREATED: Final = "key.created"
UPDATED: Final = "key.updated"
DISABLED: Final = "key.disabled"
ENABLED: Final = "key.enabled"
ROLLED: Final = "key.rolled"
REVOKED: Final = "key.revoked"
DELETED: Final = "key.deleted"
EXPIRING: Final = "key.expiring"
EXPIRED: Final = "key.expired"
TEST: Final = "key.test"
RATE_LIMITED: Final = "key.rate_limited"
QUOTA_EXCEEDED: Final = "key.quota_exceeded"
IP_DENIED: Final = "key.ip_denied"
TRAFFIC: Final = frozenset({RATE_LIMITED, QUOTA_EXCEEDED, IP_DENIED})
ALL: Final = (
    CREATED, UPDATED, DISABLED, ENABLED, ROLLED, REVOKED, DELETED,
    EXPIRING, EXPIRED, TEST, RATE_LIMITED, QUOTA_EXCEEDED, IP_DENIED,
)  # fmt: skip


def message_id() -> str:
    """The ``webhook-id`` of one event, the same on every attempt."""
    return "msg_" + secrets.token_urlsafe(18)


def for_status(old: str, new: str) -> str | None:
    """The event of a status change, None when the status did not change."""
    if old == new:
        return None
    return {"disabled": DISABLED, "active": ENABLED, "revoked": REVOKED}.get(new)


def body(
    event: str,
    at: datetime,
    key: KeyRecord,
    actor: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The JSON body receivers get; never a token, never a webhook secret."""
    data: dict[str, Any] = {"key": key.as_json(at), "actor": actor}
    if extra:
        data.update(extra)
    return orjson.dumps({"type": event, "timestamp": rfc3339(at), "data": data})


def matches(filters: Iterable[str], event: str) -> bool:
    """Whether an endpoint's ``events`` take ``event``: ``*``, ``key.*`` or its name."""
    return any(
        f in ("*", event) or (f.endswith(".*") and event.startswith(f[:-1])) for f in filters
    )
