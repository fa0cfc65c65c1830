"""Request bodies: JSON only, at most 64 KiB however they are framed.

See docs/reference.md#admin-api.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import hdrs, web

from keygate.admin.context import gateway
from keygate.gateway.errors import BadRequest, TooLarge, UnsupportedMediaType

MAX_BODY_BYTES = 64 * 1024
# Deeper documents are refused here: orjson serialises at most 254 levels, and
# no admin field needs more than a handful (metadata is echoed back).
MAX_DEPTH = 64


async def read_json(request: web.Request, limit: int = MAX_BODY_BYTES) -> Any:
    """The decoded body, or ``None`` when the request has none (the services
    refuse ``None`` where an object is required, as they refuse a JSON null).

    ``client_max_size`` limits only ``read()``, and a chunked body has no
    Content-Length to trust, so the stream is read with a running cap
    (STYLE: aiohttp traps). ``limit``: a larger cap for one endpoint (an
    import's records), before and after decoding.
    """
    present, value = await _read_body(request, limit)
    return value if present else None


async def read_optional_json(request: web.Request) -> Any:
    """For an optional object body: no body at all reads as ``{}``; anything
    sent, a JSON ``null`` included, is returned for the service to judge."""
    present, value = await _read_body(request)
    return value if present else {}


async def _read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> tuple[bool, Any]:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise TooLarge
    data = decoded(
        await read_capped(request, request.content.readany, limit),
        request.headers.get(hdrs.CONTENT_ENCODING),
        limit,
    )
    if not data:
        return False, None
    if not is_json_type(request.content_type):
        raise BadRequest("The request body must be JSON (Content-Type: application/json).")
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BadRequest("The request body is not valid JSON.") from None
    if too_deep(value, MAX_DEPTH):
        raise BadRequest(f"The request body nests deeper than {MAX_DEPTH} levels.")
    return True, value


async def read_capped(
    request: web.Request,
    read: Callable[[], Awaitable[bytes]],
    limit: int,
    too_large: str | None = None,
) -> bytes:
    """Everything ``read`` returns until it returns b"", at most ``limit`` bytes
    (413 beyond), each read bounded by ``server.body_idle_timeout`` (400)."""
    idle = gateway(request).settings.server.body_idle_timeout
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await read()
        except TimeoutError:
            raise BadRequest("The request body stalled.") from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise TooLarge(too_large)
        chunks.append(chunk)


def decoded(data: bytes, coding: str | None, limit: int = MAX_BODY_BYTES) -> bytes:
    """``data`` without its Content-Encoding, at most ``limit`` bytes decoded.

    keygate's server hands bodies over as they arrived (the proxy relays them
    byte for byte), so the admin API decodes what it accepts itself.
    """
    coding = (coding or "").strip().lower()
    if not coding or coding == "identity":
        return data
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedMediaType("Use gzip or deflate, or no Content-Encoding.")
    inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise BadRequest("The request body could not be decoded.") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge
    if data and not inflater.eof:
        raise BadRequest("The request body could not be decoded.")
    return out


def is_json_type(content_type: str) -> bool:
    """``application/json`` or a structured ``+json`` type (RFC 6839 §3.1)."""
    main, _, sub = content_type.lower().partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def too_deep(value: Any, limit: int) -> bool:
    """Whether arrays/objects nest deeper than ``limit``; iterative, so no recursion limit."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
