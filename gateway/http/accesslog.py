"""One structured line per request, never a token or a query string.

aiohttp's default format prints the request line, query included, and a query
may carry a key (``query:api_key`` source): we log the path only.
"""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from keygate.gateway.state import key_id_key, request_id_key, route_key

MAX_PATH = 256


def _safe(value: str) -> str:
    # Paths are attacker-chosen: keep the line one line and bounded.
    value = value[:MAX_PATH]
    if value.isprintable() and " " not in value and '"' not in value:
        return value
    return "".join(c if c.isprintable() and c not in ' "' else f"%{ord(c):02X}" for c in value)


def access_message(
    method: str,
    raw_target: str,
    status: int,
    seconds: float,
    key_id: str | None,
    route: str | None,
    request_id: str | None,
) -> str:
    """The access line's message, for aiohttp's requests and the edge protocol's alike."""
    return (
        f"method={_safe(method)} path={_safe(raw_target.partition('?')[0])} status={status} "
        f"duration_ms={seconds * 1000.0:.2f} key_id={key_id or '-'} route={route or '-'} "
        f"request_id={request_id or '-'}"
    )


class AccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        message = access_message(
            request.method,
            request.raw_path,
            response.status,
            time,
            request.get(key_id_key),
            request.get(route_key),
            request.get(request_id_key),
        )
        self.logger.info("%s", message)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
