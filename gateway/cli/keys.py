"""``keygate keys …``: create, list, show, change, roll and remove API keys."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from keygate.gateway.cli import output as out
from keygate.gateway.cli.output import Result
from keygate.gateway.cli.parser import Tree, json_object, positive_int, quota, rate_limit
from keygate.gateway.cli.runner import Env
from keygate.gateway.service.keys import LIST_STATUSES, MAX_LIMIT
from keygate.gateway.store.records import KeyRecord

DEFAULT_OWNER = "admin"  # the first admin, created by ``keygate init``


def record(key: KeyRecord, env: Env) -> dict[str, Any]:
    """The key record as the admin API shows it (``avatar_url`` under the admin prefix)."""
    return key.as_json(admin_prefix=env.settings.server.admin_prefix)


async def create(args: argparse.Namespace, env: Env) -> Result:
    body: dict[str, Any] = {"groups": args.groups, "owner": args.owner}
    for name in (
        "name",
        "description",
        "expires_in",
        "expires_at",
        "webhook_url",
        "metadata",
        "rate_limits",
        "quota",
        "allowed_ips",
    ):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    issued = await env.services.keys.create(env.actor, body)
    key = record(issued.key, env)
    headline = f"Created key {key['id']} ({out.cell(key['name'])}) for {out.cell(args.owner)}."
    doc: dict[str, Any] = {"key": key, "token": issued.token}
    text = out.issued_text(headline, key, issued.token)
    if issued.webhook_secret is not None:
        doc["webhook_secret"] = issued.webhook_secret
        text += "\n" + out.secret_block(issued.webhook_secret)
    return Result(doc, text)


async def list_keys(args: argparse.Namespace, env: Env) -> Result:
    query = {"search": args.search, "status": args.status, "owner": args.owner, "group": args.group}
    if not args.all:
        records, cursor = await env.services.keys.list(
            env.actor, limit=args.limit or 50, cursor=args.cursor, **query
        )
        items = [record(r, env) for r in records]
        note = None
        if cursor:
            note = f"more keys: add --cursor {cursor} for the next page, or --all for every page"
        return Result({"items": items, "next_cursor": cursor}, out.key_table(items), note)
    items = []
    cursor = args.cursor
    progress = sys.stderr.isatty()
    while True:
        records, cursor = await env.services.keys.list(
            env.actor, limit=args.limit or MAX_LIMIT, cursor=cursor, **query
        )
        items.extend(record(r, env) for r in records)
        if not cursor:
            break
        if progress:
            print(f"\rfetched {len(items)} keys…", end="", file=sys.stderr, flush=True)
    if progress and len(items) > len(records):
        print("\r\x1b[K", end="", file=sys.stderr, flush=True)
    return Result({"items": items, "next_cursor": None}, out.key_table(items))


async def show(args: argparse.Namespace, env: Env) -> Result:
    key = record(await env.services.keys.get(env.actor, args.id), env)
    return Result(key, out.key_fields(key))


async def disable(args: argparse.Namespace, env: Env) -> Result:
    key = record(await env.services.keys.set_status(env.actor, args.id, "disabled"), env)
    return Result(key, f"Disabled key {key['id']} ({out.cell(key['name'])}).")


async def enable(args: argparse.Namespace, env: Env) -> Result:
    key = record(await env.services.keys.set_status(env.actor, args.id, "active"), env)
    text = f"Enabled key {key['id']} ({out.cell(key['name'])}); status {key['status']}."
    return Result(key, text)


async def revoke(args: argparse.Namespace, env: Env) -> Result:
    key = record(await env.services.keys.revoke(env.actor, args.id), env)
    return Result(key, f"Revoked key {key['id']} ({out.cell(key['name'])}). This is final.")


async def delete(args: argparse.Namespace, env: Env) -> Result:
    await env.services.keys.delete(env.actor, args.id)
    return Result({"id": args.id, "deleted": True}, f"Deleted key {args.id}.")


async def roll(args: argparse.Namespace, env: Env) -> Result:
    issued = await env.services.keys.roll(env.actor, args.id, {"grace_seconds": args.grace_seconds})
    key = record(issued.key, env)
    grace = (
        f"The old token keeps working for {args.grace_seconds} seconds."
        if args.grace_seconds
        else "The old token no longer works."
    )
    headline = f"Rolled key {key['id']} ({out.cell(key['name'])}). {grace}"
    return Result({"key": key, "token": issued.token}, out.issued_text(headline, key, issued.token))


async def update(args: argparse.Namespace, env: Env) -> Result:
    body: dict[str, Any] = {}
    for name in (
        "name",
        "description",
        "groups",
        "expires_in",
        "expires_at",
        "webhook_url",
        "metadata",
        "rate_limits",
        "allowed_ips",
    ):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if args.no_expiry:
        body["expires_at"] = None
    if args.no_webhook_url:
        body["webhook_url"] = None
    if args.quota is not None:
        body["quota"] = args.quota
    if args.no_quota:
        body["quota"] = None
    changed = await env.services.keys.change(env.actor, args.id, body)
    key = record(changed.key, env)
    text = f"Updated key {key['id']}.\n\n{out.key_fields(key)}"
    if changed.webhook_secret is not None:
        key["webhook_secret"] = changed.webhook_secret
        text += "\n\n" + out.secret_block(changed.webhook_secret)
    return Result(key, text)


# --- the command tree ---------------------------------------------------------
EPILOG = """\
examples:
  keygate keys create --group billing-read --name billing-sync --owner alice
  keygate keys create --group default --rate-limit 100/60s --quota 100000/day \
      --allow-ip 203.0.113.0/24
  keygate keys list --owner alice --status active
  keygate keys disable 3k9x2m0qzt7a
  keygate keys roll 3k9x2m0qzt7a --grace-seconds 3600

Tokens are printed once, by create and roll; afterwards only the display
form (kg_<id>_…<last 4>) is shown.
"""


def _expiry(parser: argparse.ArgumentParser, *, update: bool) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--expires-in", metavar="DURATION", help='lifetime: seconds, or like "7d", "12h", "30m"'
    )
    group.add_argument(
        "--expires-at", metavar="TIME", help="expiry time, RFC 3339 (2026-12-31T23:59:59Z)"
    )
    if update:
        group.add_argument("--no-expiry", action="store_true", help="remove the expiry")


def _limits(parser: argparse.ArgumentParser, *, update: bool) -> None:
    """--rate-limit, --quota and --allow-ip (and on update, their removals)."""
    verb = "replace the rate limits" if update else "a rate limit"
    rates = parser.add_mutually_exclusive_group() if update else parser
    rates.add_argument(
        "--rate-limit",
        dest="rate_limits",
        action="append",
        type=rate_limit,
        metavar="[NAME=]N/WINDOW[:BURST]",
        help=f"{verb}: N requests per WINDOW (60s, 5m, 1h, 1d), BURST at once "
        "(default N); the name defaults to the window (repeat for up to 5)",
    )
    if update:
        rates.add_argument(
            "--clear-rate-limits",
            dest="rate_limits",
            action="store_const",
            const=[],
            help="remove every rate limit",
        )
    quotas = parser.add_mutually_exclusive_group() if update else parser
    quotas.add_argument(
        "--quota", type=quota, metavar="N/day|N/month", help="N requests per UTC day or month"
    )
    if update:
        quotas.add_argument("--no-quota", action="store_true", help="remove the quota")
    ips = parser.add_mutually_exclusive_group() if update else parser
    ips.add_argument(
        "--allow-ip",
        dest="allowed_ips",
        action="append",
        metavar="CIDR",
        help=("replace the addresses" if update else "an address or network")
        + " the key may be used from (repeat for several; none: anywhere)",
    )
    if update:
        ips.add_argument(
            "--clear-allowed-ips",
            dest="allowed_ips",
            action="store_const",
            const=[],
            help="let the key be used from anywhere",
        )


def _key_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="the key id (12 characters, as in keys list)")


def register(tree: Tree, sub: argparse._SubParsersAction) -> None:
    from keygate.gateway.cli import avatars, imports, webhooks  # they build on this module

    keys = tree.group(sub, "keys", "manage API keys", EPILOG)

    p = tree.command(
        keys,
        "create",
        "create a key and print its token once",
        handler=create,
        epilog="""\
examples:
  keygate keys create --group default
  keygate keys create --group billing-read --group billing-write --name sync \\
      --owner alice --expires-in 90d --metadata '{"team": "billing"}'
""",
    )
    p.add_argument(
        "--group",
        dest="groups",
        action="append",
        required=True,
        metavar="GROUP",
        help="a group the key gets (repeat for several; at least one)",
    )
    p.add_argument("--name", help="unique per owner; default key-<id>")
    p.add_argument("--description")
    p.add_argument(
        "--owner",
        default=DEFAULT_OWNER,
        metavar="USERNAME",
        help=f"the user who owns the key (default {DEFAULT_OWNER})",
    )
    _expiry(p, update=False)
    p.add_argument("--webhook-url", metavar="URL")
    p.add_argument("--metadata", type=json_object, metavar="JSON", help="a JSON object")
    _limits(p, update=False)

    p = tree.command(
        keys,
        "list",
        "list keys, newest first",
        handler=list_keys,
        epilog="""\
examples:
  keygate keys list
  keygate keys list --search billing --status active
  keygate keys list --all --json > keys.json
""",
    )
    p.add_argument("--search", metavar="TEXT", help="substring of name, description or id")
    p.add_argument("--status", choices=LIST_STATUSES)
    p.add_argument("--owner", metavar="USERNAME")
    p.add_argument("--group", metavar="GROUP", help="keys holding this group")
    p.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help=f"keys per page (default 50; with --all {MAX_LIMIT})",
    )
    p.add_argument("--cursor", help="next_cursor of the previous page")
    p.add_argument("--all", action="store_true", help="walk every page")

    for name, help, handler in (
        ("show", "show one key", show),
        ("disable", "disable a key (it can be enabled again)", disable),
        ("enable", "enable a disabled key", enable),
        ("revoke", "revoke a key for good", revoke),
        ("delete", "delete a key's record", delete),
    ):
        _key_id(
            tree.command(
                keys,
                name,
                help,
                handler=handler,
                epilog=f"example:\n  keygate keys {name} 3k9x2m0qzt7a\n",
            )
        )

    p = tree.command(
        keys,
        "roll",
        "give a key a new token; print it once",
        handler=roll,
        epilog="example:\n  keygate keys roll 3k9x2m0qzt7a --grace-seconds 3600\n",
    )
    _key_id(p)
    p.add_argument(
        "--grace-seconds",
        type=int,
        default=0,
        metavar="N",
        help="seconds the old token keeps working (default 0)",
    )

    change = (
        "--name",
        "--description",
        "--group",
        "--clear-groups",
        "--expires-in",
        "--expires-at",
        "--no-expiry",
        "--webhook-url",
        "--no-webhook-url",
        "--metadata",
        "--rate-limit",
        "--clear-rate-limits",
        "--quota",
        "--no-quota",
        "--allow-ip",
        "--clear-allowed-ips",
    )
    p = tree.command(
        keys,
        "update",
        "change a key's fields",
        handler=update,
        change=change,
        epilog="""\
examples:
  keygate keys update 3k9x2m0qzt7a --name billing-sync-2 --expires-in 30d
  keygate keys update 3k9x2m0qzt7a --group billing-read --no-expiry
""",
    )
    _key_id(p)
    p.add_argument("--name")
    p.add_argument("--description")
    groups = p.add_mutually_exclusive_group()
    groups.add_argument(
        "--group",
        dest="groups",
        action="append",
        metavar="GROUP",
        help="replace the groups (repeat for several)",
    )
    groups.add_argument(
        "--clear-groups", dest="groups", action="store_const", const=[], help="remove every group"
    )
    _expiry(p, update=True)
    hook = p.add_mutually_exclusive_group()
    hook.add_argument("--webhook-url", metavar="URL")
    hook.add_argument("--no-webhook-url", action="store_true", help="remove the webhook URL")
    p.add_argument(
        "--metadata", type=json_object, metavar="JSON", help="replace the metadata (a JSON object)"
    )
    _limits(p, update=True)
    avatars.register(tree, keys)
    imports.register(tree, keys)
    webhooks.register(tree, keys)
