"""JSON responses, serialised with orjson."""

from __future__ import annotations

import orjson
from aiohttp import hdrs, web

JSON = "application/json"


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON)


def no_content() -> web.Response:
    return web.Response(status=204)


def no_store(response: web.StreamResponse) -> None:
    """Admin answers may carry a token once: no cache may keep them (RFC 9111 §5.2.2.5)."""
    response.headers[hdrs.CACHE_CONTROL] = "no-store"
