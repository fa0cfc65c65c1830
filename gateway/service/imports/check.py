"""One entry judged: the key, its name, owner, groups, expiry and description,
by the rules a created key follows (docs/reference.md#key-record), or the
reason it cannot be imported (pure: the owners and groups are given)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keygate.gateway.auth import keyformat
from keygate.gateway.service import bodies
from keygate.gateway.service import validation as v
from keygate.gateway.store.records import ADMIN_GROUP, UserRecord

_ONE_LINE = re.compile(bodies.ONE_LINE)
_FREE_TEXT = re.compile(bodies.FREE_TEXT)
_USERNAME = re.compile(bodies.USERNAME_PATTERN)
_GROUP_SPLIT = re.compile(r"[\s,;]+")
# Anything but visible ASCII: spaces, controls, non-ASCII.
_INVISIBLE = re.compile(r"[^\x21-\x7e]")


@dataclass(frozen=True, slots=True)
class Defaults:
    """What the command line (or the request) adds to every entry."""

    owner: str | None = None  # for entries that name none
    groups: tuple[str, ...] = ()  # added to each entry's own
    source: str = "api"  # metadata.imported_from


@dataclass(frozen=True, slots=True)
class Valid:
    line: int
    token: str
    name: str | None  # None: key-<id>
    owner: UserRecord
    groups: tuple[str, ...]
    expires_at: datetime | None
    description: str
    metadata: dict[str, Any]


def key_problem(key: Any, prefix: str) -> str | None:
    if key is None or key == "":
        return "no key"
    if not isinstance(key, str):
        return "the key must be a string"
    if _INVISIBLE.search(key) is not None:
        return "the key holds spaces, control or non-ASCII characters"
    if len(key) < keyformat.IMPORTED_MIN:
        return f"the key is shorter than {keyformat.IMPORTED_MIN} characters"
    if len(key) > keyformat.IMPORTED_MAX:
        return f"the key is longer than {keyformat.IMPORTED_MAX} characters"
    if keyformat.well_formed(key, prefix):
        return "the key is a keygate token already: keygate would read it as one of its own"
    return None


def judge(
    entry: Any,
    defaults: Defaults,
    users: Mapping[str, UserRecord | None],
    groups: set[str],
    prefix: str,
    now: datetime,
) -> Valid | str:
    """The entry as it would be stored, or the first reason it cannot be."""
    problem = key_problem(entry.key, prefix)
    if problem is not None:
        return problem
    name = entry.name
    if name is not None and (
        not isinstance(name, str) or len(name) > 100 or not _ONE_LINE.match(name)
    ):
        return (
            "name must be 1-100 characters on one line, without leading or trailing "
            "spaces or control characters"
        )
    owner_name = entry.owner if entry.owner is not None else defaults.owner
    if owner_name is None:
        return "no owner (give one in the file, or --owner)"
    if not isinstance(owner_name, str) or not _USERNAME.match(owner_name):
        return "owner must be a username"
    owner = users.get(owner_name)
    if owner is None:
        return f"no such user {owner_name!r}"
    given = _groups(entry.groups)
    if isinstance(given, str):
        return given
    wanted = tuple(sorted({*given, *defaults.groups}))
    for group in wanted:
        if group not in groups:
            return f"unknown group {group[:64]!r}"
        if not (owner.role == "admin" or (group != ADMIN_GROUP and group in owner.groups)):
            return f"the owner {owner.username!r} may not hold group {group!r}"
    expires = entry.expires_at
    if expires is not None and not isinstance(expires, datetime):
        if not isinstance(expires, str):
            return "expires_at must be an RFC 3339 time"
        try:
            expires = v.parse_time(expires)
        except ValueError as exc:
            return f"expires_at {exc}"
    if expires is not None and expires <= now:
        return "expires_at is in the past"
    description = entry.description or ""
    if not isinstance(description, str) or len(description) > 1000 or not _FREE_TEXT.match(
        description
    ):
        return "description must be at most 1000 characters without control characters"
    metadata = {"imported_from": defaults.source, **entry.metadata}
    problem = v.metadata_problem(metadata)
    if problem is not None:
        return f"metadata {problem}"
    return Valid(
        entry.line, entry.key, name, owner, wanted, expires, description, metadata
    )


def _groups(value: Any) -> list[str] | str:
    if value is None:
        return []
    if isinstance(value, str):
        value = [g for g in _GROUP_SPLIT.split(value) if g]
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        return "groups must be a list of group names"
    if len(value) > 100:
        return "groups must be a list of at most 100 group names"
    return value


class Names:
    """Names unique per owner, case-insensitively: ``name``, ``name-2``, …"""

    def __init__(self) -> None:
        self._taken: dict[str, set[str]] = {}
        self._next: dict[tuple[str, str], int] = {}

    def known(self, owner_id: str) -> bool:
        return owner_id in self._taken

    def load(self, owner_id: str, taken: set[str]) -> None:
        self._taken[owner_id] = set(taken)

    def take(self, owner_id: str, name: str) -> str:
        taken = self._taken[owner_id]
        key = name.casefold()
        if key not in taken:
            taken.add(key)
            return name
        n = self._next.get((owner_id, key), 2)
        while True:
            suffix = f"-{n}"
            candidate = name[: 100 - len(suffix)].rstrip() + suffix
            n += 1
            if candidate.casefold() not in taken:
                self._next[(owner_id, key)] = n
                taken.add(candidate.casefold())
                return candidate
