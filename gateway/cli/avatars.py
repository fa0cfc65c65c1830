"""``keygate keys avatar …``: set, get and delete a key's avatar (docs/admin-api.md#avatars)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from keygate.gateway.cli import output as out
from keygate.gateway.cli.keys import record
from keygate.gateway.cli.output import Result
from keygate.gateway.cli.parser import Tree
from keygate.gateway.cli.runner import Env
from keygate.gateway.errors import Invalid, TooLarge
from keygate.gateway.service.images import MAX_UPLOAD_BYTES


def _read_image(path: str) -> bytes:
    """At most one byte more than the limit: the service says 413 past it."""
    try:
        with Path(path).open("rb") as file:
            return file.read(MAX_UPLOAD_BYTES + 1)
    except OSError as exc:
        raise Invalid({"file": f"cannot be read: {exc.strerror or exc}"}) from None


async def set_avatar(args: argparse.Namespace, env: Env) -> Result:
    data = await asyncio.to_thread(_read_image, args.file)
    if len(data) > MAX_UPLOAD_BYTES:
        raise TooLarge(f"The image is over {MAX_UPLOAD_BYTES // 1024} KiB.")
    key = record(await env.services.avatars.put(env.actor, args.id, data), env)
    return Result(key, f"Set the avatar of key {key['id']} ({out.cell(key['name'])}).")


async def get_avatar(args: argparse.Namespace, env: Env) -> Result:
    avatar = await env.services.avatars.get(env.actor, args.id)
    try:
        await asyncio.to_thread(Path(args.output).write_bytes, avatar.png)
    except OSError as exc:
        raise Invalid({"output": f"cannot be written: {exc.strerror or exc}"}) from None
    doc = {"id": args.id, "etag": avatar.etag, "bytes": len(avatar.png), "output": args.output}
    text = f"Wrote the avatar of key {args.id} ({len(avatar.png)} bytes, PNG) to {args.output}."
    return Result(doc, text)


async def delete_avatar(args: argparse.Namespace, env: Env) -> Result:
    await env.services.avatars.delete(env.actor, args.id)
    return Result({"id": args.id, "avatar_url": None}, f"Key {args.id} has no avatar now.")


EPILOG = """\
examples:
  keygate keys avatar set 3k9x2m0qzt7a logo.png
  keygate keys avatar get 3k9x2m0qzt7a --output avatar.png
  keygate keys avatar delete 3k9x2m0qzt7a

The image (PNG, JPEG, GIF or WebP, at most 1 MiB) is re-encoded as a
256x256 PNG; only that PNG is stored.
"""


def register(tree: Tree, keys: argparse._SubParsersAction) -> None:
    avatar = tree.group(keys, "avatar", "set, get or delete a key's avatar image", EPILOG)
    p = tree.command(
        avatar,
        "set",
        "set a key's avatar from an image file",
        handler=set_avatar,
        epilog="example:\n  keygate keys avatar set 3k9x2m0qzt7a logo.png\n",
    )
    p.add_argument("id", metavar="ID", help="the key id")
    p.add_argument("file", metavar="FILE", help="a PNG, JPEG, GIF or WebP image, at most 1 MiB")
    p = tree.command(
        avatar,
        "get",
        "write a key's avatar (PNG) to a file",
        handler=get_avatar,
        epilog="example:\n  keygate keys avatar get 3k9x2m0qzt7a --output avatar.png\n",
    )
    p.add_argument("id", metavar="ID", help="the key id")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="where to write it")
    p = tree.command(
        avatar,
        "delete",
        "remove a key's avatar",
        handler=delete_avatar,
        epilog="example:\n  keygate keys avatar delete 3k9x2m0qzt7a\n",
    )
    p.add_argument("id", metavar="ID", help="the key id")
