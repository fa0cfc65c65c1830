"""``keygate keys import`` and ``keygate keys export``: keys from other systems
in, key records out (docs/reference.md#imported-keys)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm  # type: ignore[import-untyped]

from keygate.gateway.cli import output as out
from keygate.gateway.cli.output import Result
from keygate.gateway.cli.parser import Tree
from keygate.gateway.cli.runner import Env
from keygate.gateway.errors import Invalid
from keygate.gateway.service import exports, imports
from keygate.gateway.service.imports.check import Defaults
from keygate.gateway.service.imports.service import ImportReport


def _data(path: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise Invalid({"file": f"cannot be read: {exc.strerror or exc}"}) from None


async def import_keys(args: argparse.Namespace, env: Env) -> Result:
    found = imports.read(_data(args.file), args.format)
    defaults = Defaults(
        owner=args.owner, groups=tuple(args.groups or ()), source=args.format
    )
    # A bar only for a person watching: a pipe or a log gets the summary alone.
    with tqdm(
        total=len(found.entries),
        unit="key",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        desc="checking" if args.dry_run else "importing",
    ) as bar:
        report = await env.services.imports.run(
            env.actor,
            found.entries,
            found.problems,
            defaults=defaults,
            dry_run=args.dry_run,
            progress=bar.update,
        )
    if report.invalid:
        # A refusal like any other: exit 1, each line and its reason on stderr.
        many = len(report.invalid) != 1
        raise Invalid(
            {(f"line {p.line}" if p.line else "file"): p.reason for p in report.invalid},
            f"Nothing imported: {len(report.invalid)} invalid line{'s' if many else ''} "
            f"(of {report.total} keys read); fix {'them' if many else 'it'} and run again.",
        )
    return Result(report.as_json(), summary(report))


def summary(report: ImportReport) -> str:
    verb = "Would import" if report.dry_run else "Imported"
    lines = [
        f"{verb} {report.imported} keys; skipped {report.skipped} already present; 0 invalid."
    ]
    for owner, keys, limit in report.over_limit:
        lines.append(
            f"Note: {out.cell(owner)} {'would hold' if report.dry_run else 'holds'} {keys} keys, "
            f"above auth.max_keys_per_user ({limit}); the limit does not apply to imports, "
            "but stops new keys for this owner."
        )
    return "\n".join(lines)


async def export_keys(args: argparse.Namespace, env: Env) -> Result:
    records = [r async for r in exports.rows(env.services.keys, env.actor)]
    text = exports.as_csv(records) if args.format == "csv" else out.dumps(records)
    return Result(records, text)


EPILOG = """\
examples:
  keygate keys import key-auths.json --format kong --owner billing --group billing-read
  keygate keys import clients.csv --format csv --owner alice --dry-run
  keygate keys import api_keys.map --format nginx-map --owner legacy --group default

A key keeps working exactly as clients send it: only the SHA-256 digest of
the whole token is stored. Keys already present are skipped, so running an
import again completes it. Any invalid line stops the import before anything
is written (exit 1), and the summary names each line and its reason.
"""


def register(tree: Tree, keys: argparse._SubParsersAction) -> None:
    p = tree.command(
        keys,
        "import",
        "import keys clients already hold (CSV, JSON, Kong, nginx map)",
        handler=import_keys,
        epilog=EPILOG,
    )
    p.add_argument("file", metavar="FILE", help="the file to read; - for standard input")
    p.add_argument(
        "--format",
        required=True,
        choices=imports.FORMATS,
        help="csv (a 'key' column; optional name, owner, groups, expires_at, description), "
        "json (lines or an array of such objects), kong (GET /key-auths), "
        "nginx-map (map $http_x_api_key $name { \"key\" name; })",
    )
    p.add_argument(
        "--owner", metavar="USERNAME", help="the owner of keys whose line names none"
    )
    p.add_argument(
        "--group",
        dest="groups",
        action="append",
        metavar="GROUP",
        help="a group every imported key gets (repeat for several)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check everything and report; write nothing"
    )

    p = tree.command(
        keys,
        "export",
        "write every key record (never a token or digest) as CSV or JSON",
        handler=export_keys,
        epilog="examples:\n  keygate keys export --format csv > keys.csv\n"
        "  keygate keys export --format json > keys.json\n",
    )
    p.add_argument("--format", choices=exports.FORMATS, default="json", help="default json")
