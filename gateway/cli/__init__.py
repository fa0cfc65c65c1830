"""The ``keygate`` command line (docs/reference.md#cli).

Exit status: 0 success; 1 a refused operation (``error: <code>: <message>`` on
stderr, then one line per detail), or the store cannot be opened; 2 bad usage
(argparse) or bad configuration (``keygate: config error: <message>``).
Expected failures never print a traceback. With ``--json`` stdout carries
exactly one JSON document on success and nothing on failure.

Every management command opens the store, calls the same services as the
admin API (as :meth:`Actor.cli`, audited as ``cli:<os user>``), and closes it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from keygate.config import ConfigError, load_settings
from keygate.gateway.cli.lifecycle import serve_overrides
from keygate.gateway.cli.output import Result, dumps, error_lines
from keygate.gateway.cli.parser import build_parser, missing_change
from keygate.gateway.cli.runner import with_store
from keygate.gateway.errors import KeygateError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        problem = missing_change(args)
        if problem:
            args.cmd_parser.error(problem)
    except SystemExit as exc:  # argparse: --help (0) or bad usage (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        settings = load_settings(args.config, os.environ, overrides=serve_overrides(args))
        if args.run is not None:
            return int(args.run(args, settings))
        result = asyncio.run(with_store(settings, args.handler, args))
    except ConfigError as exc:
        print(f"keygate: config error: {exc}", file=sys.stderr)
        return 2
    except KeygateError as exc:
        print("\n".join(error_lines(exc)), file=sys.stderr)
        return 1
    except OSError as exc:  # the store's file or socket, past what the store reports
        print(f"error: store_unavailable: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("keygate: interrupted", file=sys.stderr)
        return 130
    return emit(result, as_json=args.json)


def emit(result: Result, *, as_json: bool) -> int:
    try:
        if as_json:
            sys.stdout.write(dumps(result.doc) + "\n")
        else:
            sys.stdout.write(result.text.rstrip("\n") + "\n")
            if result.note:
                print(result.note, file=sys.stderr)
        sys.stdout.flush()
    except BrokenPipeError:
        # `keygate keys list | head`: the reader left; that is not a failure.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
