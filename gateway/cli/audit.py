"""``keygate audit …``: the trail of every admin change, newest first."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from keygate.gateway.cli import output as out
from keygate.gateway.cli.output import Result
from keygate.gateway.cli.parser import Tree, positive_int
from keygate.gateway.cli.runner import Env

EPILOG = """\
examples:
  keygate audit list
  keygate audit list --limit 20 --json
  keygate audit list --target-type key --target 3k9x2m0qzt7a

Every change made through the admin API or the CLI is recorded in the same
transaction as the change: who (user and key id, or cli:<os user>), what,
which record, which fields, when and from which address. Tokens never are.
"""


async def list_audit(args: argparse.Namespace, env: Env) -> Result:
    records, cursor = await env.services.audit.list(
        env.actor,
        limit=args.limit,
        cursor=args.cursor,
        target_type=args.target_type,
        target=args.target,
        actor_name=args.actor,
    )
    items = [r.as_json() for r in records]
    note = f"more records: add --cursor {cursor} for the next page" if cursor else None
    return Result({"items": items, "next_cursor": cursor}, audit_table(items), note)


def audit_table(items: Sequence[Mapping[str, Any]]) -> str:
    if not items:
        return "No audit records."
    rows = (
        [
            out.short_time(a["at"]),
            out.cell(a["actor"]["username"]),
            out.cell(a["actor"]["key_id"]),
            out.cell(a["action"]),
            out.cell(f"{a['target']['type']}:{a['target']['id']}", width=40),
            out.cell(a["client_addr"]),
            out.cell(a["changes"], width=60),
        ]
        for a in items
    )
    headers = ("AT", "ACTOR", "KEY", "ACTION", "TARGET", "FROM", "CHANGES")
    return out.table(headers, rows)


def register(tree: Tree, sub: argparse._SubParsersAction) -> None:
    audit = tree.group(sub, "audit", "read the audit trail", EPILOG)
    p = tree.command(
        audit,
        "list",
        "list audit records, newest first",
        handler=list_audit,
        epilog="examples:\n  keygate audit list\n  keygate audit list --limit 100 --json\n",
    )
    p.add_argument("--limit", type=positive_int, default=50, metavar="N", help="default 50")
    p.add_argument("--cursor", help="next_cursor of the previous page")
    p.add_argument("--target-type", choices=("key", "user", "group"), help="only this kind")
    p.add_argument("--target", metavar="ID", help="only this key id, username or group name")
    p.add_argument("--actor", metavar="USERNAME", help="only changes by this user")
