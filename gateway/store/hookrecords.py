"""Typed records of webhook deliveries (docs/webhooks.md), exchanged with the store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keygate.gateway.store.records import rfc3339

# At most this much of a receiver's answer is kept (and shown).
RESPONSE_KEPT = 1024


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One event on its way to one receiver, as the deliveries list shows it."""

    id: str
    event_id: str  # the webhook-id every attempt carries
    event: str
    target: str  # key (the key's webhook_url) | endpoint (an operator's)
    url: str
    status: str  # pending | delivered | failed | abandoned
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    last_response: str | None
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "event": self.event,
            "target": self.target,
            "url": self.url,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": rfc3339(self.next_attempt_at),
            "last_attempt_at": rfc3339(self.last_attempt_at),
            "last_status_code": self.last_status,
            "last_error": self.last_error,
            "last_response": self.last_response,
            "created_at": rfc3339(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this process claimed: everything one attempt needs."""

    seq: int
    id: str
    key_id: str
    target: str
    url: str
    attempts: int  # this attempt included
    event_id: str
    event: str
    body: bytes
    # The key's signing secrets now (a rotated one beside the new during its
    # overlap); empty for an endpoint, whose secret is in the settings.
    secrets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended. ``result``: delivered, retry, gone or abandoned."""

    result: str
    status: int | None = None
    error: str | None = None
    response: str | None = None
    next_attempt_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """A receiver of fanned-out events: the key's URL, or an operator endpoint's."""

    target: str
    url: str
