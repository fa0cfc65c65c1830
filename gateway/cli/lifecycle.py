"""``keygate serve``, ``keygate init`` and ``keygate migrate``."""

from __future__ import annotations

import argparse
import os

from keygate.config import load_settings, with_upstream
from keygate.config.settings import Settings
from keygate.gateway.cli import output as out
from keygate.gateway.cli.output import Result
from keygate.gateway.cli.parser import Tree, positive_int
from keygate.gateway.cli.runner import Env
from keygate.gateway.service.bootstrap import create_first_admin


def serve_overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    server = {
        name: getattr(args, name)
        for name in ("listen", "workers")
        if getattr(args, name, None) is not None
    }
    return {"server": server} if server else {}


def serve_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    if args.upstream is not None:
        settings = with_upstream(settings, args.upstream)
    return settings


def serve(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here: the management commands need none of the server's machinery.
    from keygate.gateway.cli.serve import run

    def load() -> Settings:
        """The configuration as the command line, the environment and the file say now."""
        return serve_settings(
            args, load_settings(args.config, os.environ, overrides=serve_overrides(args))
        )

    return run(serve_settings(args, settings), load)


def check_config(args: argparse.Namespace, settings: Settings) -> int:
    """``keygate check-config``: the file is loaded and checked as ``serve`` would
    (routes, TLS files), nothing is started; a problem is ConfigError (exit 2)."""
    from keygate.gateway.http.reload import check

    check(settings)
    routes = len(settings.routes)
    tls = ", TLS" if settings.server.tls_cert_file is not None else ""
    print(
        f"keygate: {settings.source}: the configuration is valid "
        f"({routes} route{'' if routes == 1 else 's'}{tls})"
    )
    return 0


async def init(args: argparse.Namespace, env: Env) -> Result:
    issued = await create_first_admin(env.ctx)
    key = issued.key.as_json()
    user_record = await env.store.get_user(issued.key.owner_username)
    user = user_record.as_json() if user_record is not None else None
    text = (
        f"Created the first admin user {out.cell(key['owner']['username'])} and its key "
        f"{out.cell(key['name'])} ({out.cell(key['display'])}) in group admin.\n\n"
        f"Admin token ({out.TOKEN_NOTICE}):\n\n    {issued.token}\n"
    )
    return Result({"user": user, "key": key, "token": issued.token}, text)


async def migrate(args: argparse.Namespace, env: Env) -> Result:
    # Opening the store already applies what is pending; ask again in case
    # another process migrated in between (it then reports nothing).
    applied = [*env.store.applied_on_open, *await env.store.migrate()]
    if applied:
        text = "Applied migrations: " + ", ".join(str(v) for v in applied) + "."
    else:
        text = "The store is up to date; no migrations to apply."
    return Result({"applied": applied}, text)


def register(tree: Tree, sub: argparse._SubParsersAction) -> None:
    p = tree.command(
        sub,
        "serve",
        "run the gateway",
        run=serve,
        epilog="""\
examples:
  keygate serve --upstream http://127.0.0.1:8000
  keygate serve --config /etc/keygate/keygate.toml --workers 4

On first start with an empty store, serve creates the first admin user and
prints its admin key once on stderr.
""",
    )
    p.add_argument(
        "--upstream",
        metavar="URL",
        help='shorthand: one route "default" at / to URL, open to the default group',
    )
    p.add_argument("--listen", metavar="HOST:PORT", help="override server.listen")
    p.add_argument("--workers", type=positive_int, metavar="N", help="override server.workers")

    tree.command(
        sub,
        "check-config",
        "check a configuration file without starting (exit 0 valid, 2 invalid)",
        run=check_config,
        epilog="""\
examples:
  keygate check-config --config /etc/keygate/keygate.toml
  keygate check-config --config new.toml && systemctl reload keygate

Loads the file as serve would (with KEYGATE_* from the environment), builds
the route table and loads the TLS files; the store is not opened. A problem
is one line naming the file, the setting and what is wrong (exit 2).
""",
    )

    tree.command(
        sub,
        "init",
        "create the store and the first admin; print its token once",
        handler=init,
        epilog="""\
examples:
  keygate init
  keygate init --json > first-admin.json

Creates user "admin" (role admin) with a key named "admin" in group admin.
Refused (exit status 1, admin_exists) when an active admin exists already.
""",
    )

    tree.command(
        sub,
        "migrate",
        "apply pending store migrations",
        handler=migrate,
        epilog="""\
example:
  keygate migrate --config /etc/keygate/keygate.toml
""",
    )
