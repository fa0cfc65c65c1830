"""The argument parser: shared options, the command tree, argument types."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from keygate.gateway.cli.runner import Handler

PROG = "keygate"
DESCRIPTION = "keygate: an API-key gateway. Serve the proxy; manage users, groups and keys."
EPILOG = """\
examples:
  keygate serve --upstream http://127.0.0.1:8000
  keygate init
  keygate keys create --group default --name ci --expires-in 30d
  keygate keys list --status active
  keygate --json users list

settings come from --config FILE (or $KEYGATE_CONFIG), overridden by
KEYGATE_<SECTION>_<NAME> variables such as KEYGATE_STORE_URL. Management
commands write the store directly; running gateways see a change within a
second.

exit status: 0 success; 1 refused operation (its code and message on stderr);
2 bad usage or bad configuration.
"""

Run = Callable[[argparse.Namespace, Any], int]


def add_common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--config`` and ``--json``, accepted before and after any subcommand.

    Subcommands default to SUPPRESS so that a value given before the
    subcommand is not overwritten by the subcommand's default.
    """
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None if top else argparse.SUPPRESS,
        help="settings file (TOML); default $KEYGATE_CONFIG, else built-in defaults",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print exactly one JSON document on stdout",
    )


class Tree:
    """Adds commands that all share the common options and the help layout."""

    def __init__(self, root: argparse.ArgumentParser) -> None:
        self.common = argparse.ArgumentParser(add_help=False)
        add_common_options(self.common, top=False)
        self.root = root

    def group(
        self, sub: argparse._SubParsersAction, name: str, help: str, epilog: str
    ) -> argparse._SubParsersAction:
        parser = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=epilog,
            parents=[self.common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def command(
        self,
        sub: argparse._SubParsersAction,
        name: str,
        help: str,
        *,
        epilog: str = "",
        handler: Handler | None = None,
        run: Run | None = None,
        change: Sequence[str] = (),
    ) -> argparse.ArgumentParser:
        """A leaf command: ``handler`` runs with the store open, ``run`` without.

        ``change`` lists the flags of an update command, one of which must be given.
        """
        parser = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=epilog or None,
            parents=[self.common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(
            handler=handler, run=run, change_fields=tuple(change), cmd_parser=parser
        )
        return parser


def build_parser() -> argparse.ArgumentParser:
    from keygate.gateway.cli import audit, groups, keys, lifecycle, users

    root = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(root, top=True)
    root.set_defaults(handler=None, run=None, change_fields=(), cmd_parser=root)
    sub = root.add_subparsers(dest="command", metavar="COMMAND", required=True)
    tree = Tree(root)
    lifecycle.register(tree, sub)
    keys.register(tree, sub)
    users.register(tree, sub)
    groups.register(tree, sub)
    audit.register(tree, sub)
    return root


def missing_change(args: argparse.Namespace) -> str | None:
    """For update commands: a usage message when none of the ``change`` options was given."""
    flags: tuple[str, ...] = args.change_fields
    if not flags:
        return None
    parser: argparse.ArgumentParser = args.cmd_parser
    for action in parser._actions:
        given = getattr(args, action.dest, None) not in (None, False)
        if given and set(action.option_strings) & set(flags):
            return None
    return "nothing to change: give at least one of " + ", ".join(flags)


# --- argument types (argparse turns their errors into exit status 2) --------
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def json_object(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise argparse.ArgumentTypeError("not valid JSON") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, like \'{"team": "billing"}\'')
    return value


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def rate_limit(text: str) -> dict[str, Any]:
    """``[NAME=]LIMIT/WINDOW[:BURST]``: ``100/60s``, ``burst=20/1s:40``, ``1000/1h``.

    WINDOW is seconds with an optional unit (s, m, h, d; a bare unit is one of
    it: ``100/m``); the name defaults to the window as written.
    """
    name, sep, rest = text.partition("=")
    if not sep:
        name, rest = "", text
    rest, sep, burst_text = rest.partition(":")
    limit_text, sep_slash, window_text = rest.partition("/")
    window_text = window_text.strip()
    count, unit = window_text.rstrip("smhd") or "1", window_text[len(window_text.rstrip("smhd")):]
    if (
        not sep_slash
        or not limit_text.strip().isdigit()
        or not count.isdigit()
        or len(unit) > 1
        or (sep and not burst_text.strip().isdigit())
    ):
        raise argparse.ArgumentTypeError(
            f"not a rate limit: {text!r} (use LIMIT/WINDOW like 100/60s, with an optional "
            "NAME= in front and :BURST behind)"
        )
    window = int(count) * _SECONDS[unit or "s"]
    policy: dict[str, Any] = {
        "name": name.strip() or f"{count}{unit or 's'}",
        "limit": int(limit_text),
        "window": window,
        "burst": int(burst_text) if sep else None,
    }
    return policy


def quota(text: str) -> dict[str, Any]:
    """``LIMIT/day`` or ``LIMIT/month``."""
    limit_text, _, period = text.partition("/")
    if not limit_text.strip().isdigit() or period.strip() not in ("day", "month"):
        raise argparse.ArgumentTypeError(
            f"not a quota: {text!r} (use LIMIT/day or LIMIT/month, like 100000/day)"
        )
    return {"limit": int(limit_text), "period": period.strip()}
