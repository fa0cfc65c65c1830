"""``keygate groups …``: permission groups and their rules.

Rules come from ``--rule "ROUTE METHODS PATHS"`` flags or a rules file (JSON:
a list or ``{"rules": [...]}``; TOML: ``[[rules]]`` tables). Both are only
read here; the group service checks what they say.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

import orjson

from keygate.gateway.cli import output as out
from keygate.gateway.cli.output import Result
from keygate.gateway.cli.parser import Tree
from keygate.gateway.cli.runner import Env


# --- reading rules ------------------------------------------------------------
def rule_flag(text: str) -> dict[str, Any]:
    """``"billing GET,HEAD /billing/invoices/**"`` → one rule object."""
    parts = text.split(None, 2)
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(
            f'{text!r}: expected "ROUTE METHODS PATHS", like "billing GET,HEAD /billing/**"'
        )
    route, methods, paths = parts
    return {
        "route": route,
        "methods": [m for m in methods.split(",") if m],
        "paths": [p for p in paths.replace(",", " ").split() if p],
    }


def rules_file(name: str) -> list[Any]:
    path = Path(name)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"{name}: file not found") from None
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{name}: cannot read ({exc.strerror})") from None
    if path.suffix.lower() == ".toml":
        try:
            doc: Any = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise argparse.ArgumentTypeError(f"{name}: not valid TOML ({exc})") from None
        if set(doc) != {"rules"} or not isinstance(doc["rules"], list):
            raise argparse.ArgumentTypeError(
                f"{name}: a TOML rules file holds only [[rules]] tables"
            )
        return doc["rules"]
    if path.suffix.lower() != ".json":
        raise argparse.ArgumentTypeError(f"{name}: a rules file ends in .json or .toml")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{name}: not valid JSON ({exc})") from None
    if isinstance(doc, dict) and set(doc) == {"rules"} and isinstance(doc["rules"], list):
        return doc["rules"]
    if not isinstance(doc, list):
        raise argparse.ArgumentTypeError(
            f'{name}: a JSON rules file holds a list of rules or {{"rules": [...]}}'
        )
    return doc


def _rules(args: argparse.Namespace) -> list[Any] | None:
    if args.rules_file is not None:
        return args.rules_file
    if args.rules is not None:
        return args.rules
    return [] if args.clear_rules else None


# --- commands -------------------------------------------------------------------
async def create(args: argparse.Namespace, env: Env) -> Result:
    body: dict[str, Any] = {"name": args.name, "rules": _rules(args) or []}
    if args.description is not None:
        body["description"] = args.description
    group = (await env.services.groups.create(env.actor, body)).as_json()
    return Result(group, f"Created group {group['name']}.\n\n{out.group_fields(group)}")


async def list_groups(args: argparse.Namespace, env: Env) -> Result:
    items = [g.as_json() for g in await env.services.groups.list(env.actor)]
    return Result({"items": items}, out.group_table(items))


async def show(args: argparse.Namespace, env: Env) -> Result:
    group = (await env.services.groups.get(env.actor, args.name)).as_json()
    return Result(group, out.group_fields(group))


async def update(args: argparse.Namespace, env: Env) -> Result:
    body: dict[str, Any] = {}
    if args.description is not None:
        body["description"] = args.description
    rules = _rules(args)
    if rules is not None:
        body["rules"] = rules
    group = (await env.services.groups.update(env.actor, args.name, body)).as_json()
    return Result(group, f"Updated group {group['name']}.\n\n{out.group_fields(group)}")


async def delete(args: argparse.Namespace, env: Env) -> Result:
    await env.services.groups.delete(env.actor, args.name, force=args.force)
    return Result({"name": args.name, "deleted": True}, f"Deleted group {args.name}.")


# --- the command tree ---------------------------------------------------------
EPILOG = """\
examples:
  keygate groups create billing-read --rule "billing GET,HEAD /billing/invoices/**"
  keygate groups create billing-write --rules-file billing-write.toml
  keygate groups show billing-read
  keygate groups delete billing-read --force

A rule allows a route ("*" for any), methods ("*" for any) and path globs:
"*" is one segment, "**" zero or more. HEAD is not implied by GET.
A rules file is JSON (a list of {"route", "methods", "paths"} objects, or
{"rules": [...]}) or TOML ([[rules]] tables):

  [[rules]]
  route = "billing"
  methods = ["GET", "HEAD"]
  paths = ["/billing/invoices/**"]

Built-in groups (admin, self-service, default) cannot be changed or deleted.
"""

RULE_HELP = 'a rule "ROUTE METHODS PATHS", methods and paths comma-separated (repeatable)'


def _rule_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    rules = parser.add_mutually_exclusive_group()
    rules.add_argument(
        "--rules-file", type=rules_file, metavar="FILE", help="rules from a .json or .toml file"
    )
    rules.add_argument(
        "--rule", dest="rules", action="append", type=rule_flag, metavar="RULE", help=RULE_HELP
    )
    if update:
        rules.add_argument("--clear-rules", action="store_true", help="remove every rule")
    else:
        parser.set_defaults(clear_rules=False)


def register(tree: Tree, sub: argparse._SubParsersAction) -> None:
    groups = tree.group(sub, "groups", "manage permission groups", EPILOG)

    p = tree.command(
        groups,
        "create",
        "create a group",
        handler=create,
        epilog="""\
examples:
  keygate groups create billing-read --description "read invoices" \\
      --rule "billing GET,HEAD /billing/invoices/**"
  keygate groups create ops --rule "* * /**"
  keygate groups create billing-write --rules-file billing-write.json
""",
    )
    p.add_argument("name", metavar="NAME", help="[a-z0-9][a-z0-9_-]{0,63}")
    p.add_argument("--description")
    _rule_options(p, update=False)

    tree.command(
        groups,
        "list",
        "list groups",
        handler=list_groups,
        epilog="example:\n  keygate groups list --json\n",
    )

    p = tree.command(
        groups,
        "show",
        "show a group and its rules",
        handler=show,
        epilog="example:\n  keygate groups show billing-read\n",
    )
    p.add_argument("name", metavar="NAME")

    p = tree.command(
        groups,
        "update",
        "change a group's description or rules",
        handler=update,
        change=("--description", "--rules-file", "--rule", "--clear-rules"),
        epilog="""\
examples:
  keygate groups update billing-read --rule "billing GET,HEAD /billing/**"
  keygate groups update billing-read --rules-file billing-read.toml
""",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--description")
    _rule_options(p, update=True)

    p = tree.command(
        groups,
        "delete",
        "delete a group",
        handler=delete,
        epilog="""\
examples:
  keygate groups delete billing-read
  keygate groups delete billing-read --force   # also take it from users and keys
""",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--force",
        action="store_true",
        help="delete even when users or keys hold the group (taking it from them)",
    )
