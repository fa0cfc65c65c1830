"""``/api/v1/keys/{id}/avatar``: a key's image (docs/admin-api.md#avatars).

The upload is the request body itself (any image Content-Type) or the
``file`` field of a ``multipart/form-data`` body, at most 1 MiB (413). The
service decodes and re-encodes it; only keygate's PNG is ever stored or
served, with ``nosniff``, a sandboxing CSP and an ``ETag``.
"""

from __future__ import annotations

import re

from aiohttp import BodyPartReader, hdrs, web

from keygate.admin import params
from keygate.admin.body import read_capped
from keygate.admin.context import actor, services
from keygate.admin.handlers.keys import key_json
from keygate.admin.responses import json_response, no_content
from keygate.gateway.errors import (
    BadRequest,
    Invalid,
    KeygateError,
    TooLarge,
    UnsupportedMediaType,
)
from keygate.gateway.service.images import MAX_UPLOAD_BYTES

TOO_LARGE = f"The image is over {MAX_UPLOAD_BYTES // 1024} KiB."
# Room for a multipart body's boundaries and part headers around the file.
MULTIPART_SLACK = 16 * 1024
# The served PNG is never a document: nothing in it may run or load.
IMAGE_CSP = "default-src 'none'; sandbox"
VERSION = re.compile(r"[0-9a-f]{1,64}")


async def read_upload(request: web.Request) -> bytes:
    coding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    if coding not in ("", "identity"):
        raise UnsupportedMediaType("Send the image without a Content-Encoding.")
    declared = request.content_length
    if declared is not None and declared > MAX_UPLOAD_BYTES + MULTIPART_SLACK:
        raise TooLarge(TOO_LARGE)
    if request.content_type != "multipart/form-data":
        return await read_capped(
            request, request.content.readany, MAX_UPLOAD_BYTES, too_large=TOO_LARGE
        )
    try:
        return await _multipart_file(request)
    except KeygateError:
        raise
    except Exception:
        # aiohttp's multipart reader raises ValueError, AssertionError, … on a
        # malformed body, depending on where it breaks: all the client's doing.
        raise BadRequest("The multipart body could not be read.") from None


async def _multipart_file(request: web.Request) -> bytes:
    reader = await request.multipart()
    found: bytes | None = None
    while (part := await reader.next()) is not None:
        name = getattr(part, "name", None)
        if name != "file" or found is not None or not isinstance(part, BodyPartReader):
            raise Invalid({str(name or "part"): "unknown field: send one part named file"})
        found = await read_capped(
            request,
            lambda p=part: p.read_chunk(64 * 1024),  # type: ignore[misc]
            MAX_UPLOAD_BYTES,
            too_large=TOO_LARGE,
        )
    if found is None:
        raise Invalid({"file": "required"})
    return found


async def put_avatar(request: web.Request) -> web.Response:
    who = actor(request)
    key_id = request.match_info["id"]
    # Unknown or another owner's key: 404 before the body is read at all.
    await services(request).keys.get(who, key_id)
    key = await services(request).avatars.put(who, key_id, await read_upload(request))
    return json_response(key_json(request, key))


async def get_avatar(request: web.Request) -> web.Response:
    version = params.text(request.query, "v")
    if version is not None and VERSION.fullmatch(version) is None:
        raise Invalid({"v": "must be the hex version avatar_url carries"})
    avatar = await services(request).avatars.get(actor(request), request.match_info["id"])
    etag = f'"{avatar.etag}"'
    headers = {
        hdrs.ETAG: etag,
        hdrs.X_CONTENT_TYPE_OPTIONS: "nosniff",
        hdrs.CONTENT_DISPOSITION: 'inline; filename="avatar.png"',
        "Content-Security-Policy": IMAGE_CSP,
    }
    if matches(request.headers.get(hdrs.IF_NONE_MATCH), avatar.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=avatar.png, content_type="image/png", headers=headers)


async def delete_avatar(request: web.Request) -> web.Response:
    await services(request).avatars.delete(actor(request), request.match_info["id"])
    return no_content()


def matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2: ``*``, or any listed entity tag equal under weak comparison."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*":
            return True
        tag = tag.removeprefix("W/")
        if tag == f'"{etag}"':
            return True
    return False
