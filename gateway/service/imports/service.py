"""Writing imported keys: validation of the whole input first, then batches of
one transaction each (docs/reference.md#imported-keys).

Nothing is written while any entry is invalid: the report names each line and
its reason. Otherwise each batch checks which digests the store holds (they
are skipped: a second run imports nothing twice), gives the rest names unique
per owner and writes them, with an audit record per key and one change notice
per batch. A run stopped at any moment (kill -9 included) leaves whole batches
only; running it again completes it. Per-owner key limits do not stop an
import; owners left above theirs are reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from msgspec import UNSET

from keygate.gateway.auth import keyformat
from keygate.gateway.errors import Invalid
from keygate.gateway.service import bodies
from keygate.gateway.service.actor import Actor
from keygate.gateway.service.context import ServiceContext
from keygate.gateway.service.imports import jsonfile
from keygate.gateway.service.imports.check import Defaults, Names, Valid, judge
from keygate.gateway.service.imports.entries import Entry, Problem, Read
from keygate.gateway.store.errors import UniqueViolation
from keygate.gateway.store.records import KeyRecord, UserRecord, utcnow

BATCH = 2000
# A batch whose names another writer took meanwhile is named again and retried.
NAME_ATTEMPTS = 3

Progress = Callable[[int], None]


@dataclass(slots=True)
class ImportReport:
    """What an import did (or, on a dry run, would do)."""

    total: int = 0
    imported: int = 0
    skipped: int = 0
    invalid: list[Problem] = field(default_factory=list)
    # Owners holding more keys than auth.max_keys_per_user once imported:
    # (username, keys that are not revoked, the limit).
    over_limit: list[tuple[str, int, int]] = field(default_factory=list)
    dry_run: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "imported": self.imported,
            "skipped": self.skipped,
            "invalid": [p.as_json() for p in self.invalid],
            "over_limit": [
                {"owner": owner, "keys": keys, "limit": limit}
                for owner, keys, limit in self.over_limit
            ],
            "dry_run": self.dry_run,
        }


class ImportService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def request(self, actor: Actor, body: Any) -> ImportReport:
        """The admin API's import (docs/admin-api.md#import-keys): the body's
        records, all or none; each refused one is named ``records[i]``."""
        actor.require_admin()
        req, errors = bodies.decode(bodies.KeyImport, body)
        errors.raise_if_any()
        if len(req.records) > bodies.MAX_IMPORT_RECORDS:
            # The schema's maxItems: refused as any schema violation is (422).
            raise Invalid(
                {
                    "records": f"must hold at most {bodies.MAX_IMPORT_RECORDS} records: send "
                    "the rest in another request (keys already present are skipped)"
                }
            )
        if not req.records:
            raise Invalid({"records": "must hold at least one record"})
        found = Read()
        for i, value in enumerate(req.records):
            jsonfile.entry(value, i, found, label="a record")
        assert req.groups is not UNSET
        report = await self.run(
            actor,
            found.entries,
            found.problems,
            defaults=Defaults(
                owner=req.owner if isinstance(req.owner, str) else actor.username,
                groups=tuple(req.groups),
                source=str(req.source),
            ),
            dry_run=bool(req.dry_run),
            where="records[{}]",
        )
        if report.invalid:
            details = {f"records[{p.line}]": p.reason for p in report.invalid[:100]}
            raise Invalid(details, "No key was imported: the records named are not valid.")
        return report

    async def run(
        self,
        actor: Actor,
        entries: Sequence[Entry],
        problems: Sequence[Problem] = (),
        *,
        defaults: Defaults,
        dry_run: bool = False,
        progress: Progress | None = None,
        where: str = "line {}",
    ) -> ImportReport:
        """Import ``entries`` (``problems``: lines a reader could not read);
        ``where`` names an entry's line in a reason (the API: ``records[i]``)."""
        actor.require_admin()
        report = ImportReport(total=len(entries), dry_run=dry_run)
        if not entries and not problems:
            problems = [Problem(0, "the file holds no keys")]
        valid = await self._judge(entries, defaults, report, where)
        report.invalid = sorted([*problems, *report.invalid], key=lambda p: p.line)
        if report.invalid:
            return report
        if dry_run:
            for batch in _batches(valid):
                held = await self.ctx.store.held_digests([d for _, d in batch])
                report.skipped += len(held)
                if progress is not None:
                    progress(len(batch))
            report.imported = len(valid) - report.skipped
        else:
            names = Names()
            for batch in _batches(valid):
                await self._write(actor, batch, names, report)
                if progress is not None:
                    progress(len(batch))
        await self._limits(valid, report, dry_run=dry_run)
        return report

    async def _judge(
        self, entries: Sequence[Entry], defaults: Defaults, report: ImportReport, where: str
    ) -> list[tuple[Valid, bytes]]:
        store = self.ctx.store
        groups = {g.name for g in await store.list_groups()}
        users: dict[str, UserRecord | None] = {}
        wanted = {e.owner for e in entries if isinstance(e.owner, str)}
        if defaults.owner is not None:
            wanted.add(defaults.owner)
        for username in wanted:
            users[username] = await store.get_user(username)
        now = utcnow()
        prefix = self.ctx.auth.key_prefix
        seen: dict[bytes, int] = {}
        valid: list[tuple[Valid, bytes]] = []
        for entry in entries:
            judged = judge(entry, defaults, users, groups, prefix, now)
            if isinstance(judged, str):
                report.invalid.append(Problem(entry.line, judged))
                continue
            digest = keyformat.digest(judged.token)
            first = seen.setdefault(digest, entry.line)
            if first != entry.line:
                report.invalid.append(
                    Problem(entry.line, f"the same key as {where.format(first)}")
                )
                continue
            valid.append((judged, digest))
        return valid

    async def _write(
        self,
        actor: Actor,
        batch: list[tuple[Valid, bytes]],
        names: Names,
        report: ImportReport,
    ) -> None:
        store = self.ctx.store
        held = await store.held_digests([d for _, d in batch])
        fresh = [(v, d) for v, d in batch if d not in held]
        for attempt in range(1, NAME_ATTEMPTS + 1):
            keys = [(await self._record(actor, v, names), d) for v, d in fresh]
            try:
                outcome = await store.import_keys(keys, audit=lambda k: _audit(actor, k))
            except UniqueViolation as exc:
                if exc.what != "key_name" or attempt == NAME_ATTEMPTS:
                    raise
                for owner_id in {v.owner.id for v, _ in fresh}:
                    names.load(owner_id, await store.key_names(owner_id))
                continue
            break
        report.imported += len(outcome.imported)
        report.skipped += len(batch) - len(outcome.imported)
        if outcome.span is not None:
            await self.ctx.notify("keys-imported", outcome.span)

    async def _record(self, actor: Actor, valid: Valid, names: Names) -> KeyRecord:
        owner = valid.owner
        if not names.known(owner.id):
            names.load(owner.id, await self.ctx.store.key_names(owner.id))
        key_id = keyformat.new_key_id()
        head, last4 = keyformat.imported_display(valid.token)
        now = utcnow()
        return KeyRecord(
            id=key_id,
            prefix=head,
            last4=last4,
            name=names.take(owner.id, valid.name or f"key-{key_id}"),
            description=valid.description,
            status="active",
            groups=valid.groups,
            owner_id=owner.id,
            owner_username=owner.username,
            created_by_id=actor.user_id,
            created_by_username=actor.username,
            created_at=now,
            updated_at=now,
            last_used_at=None,
            expires_at=valid.expires_at,
            webhook_url=None,
            metadata=valid.metadata,
            # Set at import by an admin: its owner may only bring it forward.
            expires_by_admin=valid.expires_at is not None,
            imported=True,
        )

    async def _limits(
        self, valid: list[tuple[Valid, bytes]], report: ImportReport, *, dry_run: bool
    ) -> None:
        limit = self.ctx.auth.max_keys_per_user
        owners: dict[str, tuple[UserRecord, int]] = {}
        for v, _ in valid:
            user, n = owners.get(v.owner.id, (v.owner, 0))
            owners[v.owner.id] = (user, n + 1)
        for user, n in owners.values():
            count = await self.ctx.store.count_keys(user.id)
            if dry_run:
                count += n  # at most: skipped keys are counted twice
            if count > limit:
                report.over_limit.append((user.username, count, limit))
        report.over_limit.sort()


def _batches(valid: list[tuple[Valid, bytes]]) -> list[list[tuple[Valid, bytes]]]:
    return [valid[i : i + BATCH] for i in range(0, len(valid), BATCH)]


def _audit(actor: Actor, key: KeyRecord) -> Any:
    return actor.audit(
        "key.import",
        "key",
        key.id,
        {
            "name": key.name,
            "owner": key.owner_username,
            "groups": list(key.groups),
            "expires_at": key.expires_at.isoformat() if key.expires_at else None,
            "imported_from": key.metadata.get("imported_from"),
        },
    )
