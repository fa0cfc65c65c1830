"""Key records for another tool (docs/reference.md#cli): CSV or JSON.

Never a token or digest (keygate holds none of the first, and the second
stays in the store), nor the webhook URL, which may carry a secret of its
own; the rest of each record as the admin API shows it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import orjson

from keygate.gateway.service.actor import Actor
from keygate.gateway.service.keys import MAX_LIMIT, KeyService
from keygate.gateway.store.records import KeyRecord

FIELDS = (
    "id",
    "display",
    "name",
    "owner",
    "groups",
    "status",
    "expires_at",
    "created_at",
    "last_used_at",
    "description",
    "imported",
    "metadata",
)
FORMATS = ("csv", "json")


def row(key: KeyRecord) -> dict[str, Any]:
    doc = key.as_json()
    return {
        **{name: doc[name] for name in FIELDS if name in doc},
        "owner": key.owner_username,
        "imported": key.imported,
    }


async def rows(keys: KeyService, actor: Actor) -> AsyncIterator[dict[str, Any]]:
    """Every key the actor may see, newest first, a page at a time."""
    cursor: str | None = None
    while True:
        page, cursor = await keys.list(actor, limit=MAX_LIMIT, cursor=cursor)
        for key in page:
            yield row(key)
        if not cursor:
            return


def as_csv(records: list[dict[str, Any]]) -> str:
    """One row per key; groups space-separated (as ``keys import`` reads them),
    metadata as JSON text."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    for r in records:
        cells = {
            **r,
            "groups": " ".join(r["groups"]),
            "metadata": orjson.dumps(r["metadata"]).decode(),
            "imported": "true" if r["imported"] else "false",
        }
        writer.writerow(["" if cells[n] is None else cells[n] for n in FIELDS])
    return out.getvalue()
