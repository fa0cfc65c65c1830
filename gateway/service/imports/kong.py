"""Kong's key-auth credentials, as its Admin API lists them (pure).

The answer of ``GET /key-auths`` (or ``/consumers/{c}/key-auth``): an object
whose ``data`` list holds credentials with ``key``, ``consumer`` (``id``, and
``username`` when Kong gives it), ``tags`` and ``ttl`` (seconds left, or
null). Its pagination fields (``next``, ``offset``) are ignored: pages saved
one after the other in a JSON array are read as one list.

A key is named after its consumer (username, else id); the credential's id,
consumer and tags are kept in ``metadata.kong``; a ``ttl`` becomes an expiry
that many seconds from ``now``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from keygate.gateway.service.imports.entries import Entry, Lines, Read, decode


def read(data: bytes, now: datetime | None = None) -> Read:
    out = Read()
    text = decode(data, out)
    if text is None:
        return out
    try:
        doc = json.loads(text)
    except ValueError as exc:
        line = getattr(exc, "lineno", 0)
        out.problem(line, "not valid JSON (truncated?)")
        return out
    pages = doc if isinstance(doc, list) else [doc]
    lines = Lines(text)
    at = 0
    when = now or datetime.now(UTC)
    for page in pages:
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            out.problem(0, "not a Kong key-auth listing (an object with a 'data' list)")
            return out
        for credential in page["data"]:
            at, line = _line_of(text, lines, credential, at)
            _credential(credential, line, when, out)
    return out


def _line_of(text: str, lines: Lines, credential: Any, at: int) -> tuple[int, int]:
    """The line of this credential's key in the text (credentials come in order)."""
    key = credential.get("key") if isinstance(credential, dict) else None
    if isinstance(key, str):
        found = text.find(json.dumps(key), at)
        if found < 0:
            found = text.find(json.dumps(key, ensure_ascii=False), at)
        if found >= 0:
            return found + 1, lines.at(found)
    return at, lines.at(at)


def _credential(credential: Any, line: int, now: datetime, out: Read) -> None:
    if not isinstance(credential, dict):
        out.problem(line, "a credential must be a JSON object")
        return
    consumer = credential.get("consumer")
    consumer = consumer if isinstance(consumer, dict) else {}
    name = consumer.get("username") or consumer.get("id")
    ttl = credential.get("ttl")
    expires: Any = None
    if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl > 0:
        expires = now + timedelta(seconds=ttl)
    elif ttl not in (None, 0):
        out.problem(line, "ttl must be a number of seconds or null")
        return
    kong = {
        "id": credential.get("id"),
        "consumer": {k: consumer[k] for k in ("id", "username") if consumer.get(k)},
        "tags": credential.get("tags") or [],
    }
    out.entries.append(
        Entry(
            line,
            credential.get("key"),
            name=name if isinstance(name, str) else None,
            expires_at=expires,
            metadata={"kong": kong},
        )
    )
