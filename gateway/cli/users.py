"""``keygate users …``: the people (and services) that own keys."""

from __future__ import annotations

import argparse
from typing import Any

from keygate.gateway.cli import output as out
from keygate.gateway.cli.output import Result
from keygate.gateway.cli.parser import Tree, positive_int
from keygate.gateway.cli.runner import Env
from keygate.gateway.service.users import ROLES

PAGE = 500
STATUSES = ("active", "disabled")


async def create(args: argparse.Namespace, env: Env) -> Result:
    body = {"username": args.username, "role": args.role, "groups": args.groups or []}
    user = (await env.services.users.create(env.actor, body)).as_json()
    return Result(user, f"Created user {out.cell(user['username'])}.\n\n{out.user_fields(user)}")


async def list_users(args: argparse.Namespace, env: Env) -> Result:
    items: list[dict[str, Any]] = []
    cursor = args.cursor
    while True:
        records, cursor = await env.services.users.list(
            env.actor, limit=args.limit or PAGE, cursor=cursor
        )
        items.extend(r.as_json() for r in records)
        if not cursor or args.limit:
            break
    note = None
    if cursor:
        note = f"more users: add --cursor {cursor} for the next page"
    return Result({"items": items, "next_cursor": cursor}, out.user_table(items), note)


async def show(args: argparse.Namespace, env: Env) -> Result:
    user = (await env.services.users.get(env.actor, args.username)).as_json()
    return Result(user, out.user_fields(user))


async def update(args: argparse.Namespace, env: Env) -> Result:
    body = {
        name: getattr(args, name)
        for name in ("role", "groups", "status")
        if getattr(args, name) is not None
    }
    user = (await env.services.users.update(env.actor, args.username, body)).as_json()
    return Result(user, f"Updated user {out.cell(user['username'])}.\n\n{out.user_fields(user)}")


async def delete(args: argparse.Namespace, env: Env) -> Result:
    revoked = await env.services.users.delete(env.actor, args.username)
    doc = {"username": args.username, "deleted": True, "revoked_keys": revoked}
    keys = "key" if len(revoked) == 1 else "keys"
    return Result(doc, f"Deleted user {out.cell(args.username)}; revoked {len(revoked)} {keys}.")


# --- the command tree ---------------------------------------------------------
EPILOG = """\
examples:
  keygate users create alice --group billing-read
  keygate users update alice --group billing-read --group billing-write
  keygate users update bob --status disabled
  keygate users delete bob

A member may hold only the groups listed for them (never admin); an admin may
hold every group. Deleting a user revokes their keys.
"""


def _username(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("username", metavar="USERNAME")


def register(tree: Tree, sub: argparse._SubParsersAction) -> None:
    users = tree.group(sub, "users", "manage users", EPILOG)

    p = tree.command(
        users,
        "create",
        "create a user",
        handler=create,
        epilog="""\
examples:
  keygate users create alice --group billing-read --group self-service
  keygate users create root2 --role admin
""",
    )
    _username(p)
    p.add_argument("--role", choices=ROLES, default="member", help="default member")
    p.add_argument(
        "--group",
        dest="groups",
        action="append",
        metavar="GROUP",
        help="a group the user may hold (repeat for several)",
    )

    p = tree.command(
        users,
        "list",
        "list users by username",
        handler=list_users,
        epilog="""\
examples:
  keygate users list
  keygate users list --json
""",
    )
    p.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="one page of at most N users (default: every user)",
    )
    p.add_argument("--cursor", help="next_cursor of the previous page")

    p = tree.command(
        users,
        "show",
        "show one user",
        handler=show,
        epilog="example:\n  keygate users show alice\n",
    )
    _username(p)

    p = tree.command(
        users,
        "update",
        "change a user's role, groups or status",
        handler=update,
        change=("--role", "--group", "--clear-groups", "--status"),
        epilog="""\
examples:
  keygate users update alice --role admin
  keygate users update alice --group billing-read --group self-service
  keygate users update alice --status disabled
""",
    )
    _username(p)
    p.add_argument("--role", choices=ROLES)
    groups = p.add_mutually_exclusive_group()
    groups.add_argument(
        "--group",
        dest="groups",
        action="append",
        metavar="GROUP",
        help="replace the groups the user may hold (repeat for several)",
    )
    groups.add_argument(
        "--clear-groups", dest="groups", action="store_const", const=[], help="remove every group"
    )
    p.add_argument("--status", choices=STATUSES)

    p = tree.command(
        users,
        "delete",
        "delete a user and revoke their keys",
        handler=delete,
        epilog="example:\n  keygate users delete bob\n",
    )
    _username(p)
