"""``keygate keys webhook …``: a key's deliveries, redelivery, a test ping and
secret rotation (docs/webhooks.md). The CLI writes to the outbox; a running
``keygate serve`` on the same store delivers."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from keygate.gateway.cli import output as out
from keygate.gateway.cli.output import Result
from keygate.gateway.cli.parser import Tree, positive_int
from keygate.gateway.cli.runner import Env


def delivery_table(items: Sequence[Mapping[str, Any]]) -> str:
    if not items:
        return "No deliveries."
    rows = (
        [
            d["id"],
            d["event"],
            d["target"],
            d["status"],
            str(d["attempts"]),
            str(d["last_status_code"] or out.cell(d["last_error"], width=40)),
            out.short_time(d["next_attempt_at"]) if d["next_attempt_at"] else "-",
        ]
        for d in items
    )
    return out.table(("ID", "EVENT", "TARGET", "STATUS", "ATTEMPTS", "LAST", "NEXT"), rows)


async def deliveries(args: argparse.Namespace, env: Env) -> Result:
    items, cursor = await env.services.webhooks.deliveries(
        env.actor, args.id, limit=args.limit, cursor=args.cursor
    )
    docs = [d.as_json() for d in items]
    note = f"more deliveries: add --cursor {cursor} for the next page" if cursor else None
    return Result({"items": docs, "next_cursor": cursor}, delivery_table(docs), note)


async def redeliver(args: argparse.Namespace, env: Env) -> Result:
    record = (await env.services.webhooks.redeliver(env.actor, args.id, args.delivery)).as_json()
    text = f"Queued delivery {record['id']} of {record['event']} (webhook-id {record['event_id']})."
    return Result(record, text)


async def test(args: argparse.Namespace, env: Env) -> Result:
    event_id = await env.services.webhooks.test(env.actor, args.id)
    return Result({"event_id": event_id}, f"Queued key.test for key {args.id} ({event_id}).")


async def rotate_secret(args: argparse.Namespace, env: Env) -> Result:
    secret = await env.services.webhooks.rotate_secret(env.actor, args.id)
    text = (
        f"Rotated the webhook secret of key {args.id}; the old one signs beside it "
        f"for 24 hours.\n\n{out.secret_block(secret)}"
    )
    return Result({"webhook_secret": secret}, text)


EPILOG = """\
examples:
  keygate keys webhook deliveries 3k9x2m0qzt7a
  keygate keys webhook redeliver 3k9x2m0qzt7a dlv_Hq3…
  keygate keys webhook test 3k9x2m0qzt7a
  keygate keys webhook rotate-secret 3k9x2m0qzt7a

Deliveries are made by a running `keygate serve` on the same store.
"""


def register(tree: Tree, keys: argparse._SubParsersAction) -> None:
    hook = tree.group(keys, "webhook", "a key's webhook deliveries and signing secret", EPILOG)
    p = tree.command(
        hook,
        "deliveries",
        "list a key's webhook deliveries, newest first",
        handler=deliveries,
        epilog="example:\n  keygate keys webhook deliveries 3k9x2m0qzt7a --limit 20\n",
    )
    p.add_argument("id", metavar="ID", help="the key id")
    p.add_argument("--limit", type=positive_int, default=50, metavar="N", help="default 50")
    p.add_argument("--cursor", help="next_cursor of the previous page")
    p = tree.command(
        hook,
        "redeliver",
        "send a delivery's event again (same webhook-id)",
        handler=redeliver,
        epilog="example:\n  keygate keys webhook redeliver 3k9x2m0qzt7a dlv_Hq3…\n",
    )
    p.add_argument("id", metavar="ID", help="the key id")
    p.add_argument("delivery", metavar="DELIVERY", help="the delivery id (dlv_…)")
    for name, help, handler in (
        ("test", "send a key.test event to the key's webhook_url", test),
        ("rotate-secret", "a new signing secret (printed once); the old signs 24 h more",
         rotate_secret),
    ):  # fmt: skip
        p = tree.command(
            hook, name, help, handler=handler, epilog=f"example:\n  keygate keys webhook {name} "
            "3k9x2m0qzt7a\n",
        )  # fmt: skip
        p.add_argument("id", metavar="ID", help="the key id")
