"""The web console (docs/console.md): static files from ``admin/console/``, served locally.

The console is a thin client of the JSON API: these handlers serve only files
that ship with keygate (an allow-list, never a path from the request) and
render nothing else. Every answer carries the console's security headers;
the HTML is never cached (RFC 9111 §5.2.2.5), the other files are revalidated.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import hdrs, web

from keygate.admin.context import gateway
from keygate.gateway.errors import NotFound

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
# What the console loads; nothing else in the folder is served.
ASSETS: dict[str, str] = {
    "app.js": "text/javascript",
    "api.js": "text/javascript",
    "ui.js": "text/javascript",
    "keys.js": "text/javascript",
    "keyforms.js": "text/javascript",
    "users.js": "text/javascript",
    "groups.js": "text/javascript",
    "audit.js": "text/javascript",
    "style.css": "text/css",
    "logo.svg": "image/svg+xml",
}
INDEX = "index.html"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def secure(response: web.StreamResponse) -> web.StreamResponse:
    """The headers every console answer carries (docs/console.md#security)."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers[hdrs.X_CONTENT_TYPE_OPTIONS] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def console_redirect(request: web.Request) -> web.StreamResponse:
    prefix = gateway(request).settings.server.admin_prefix.rstrip("/")
    # RFC 9110 §15.4.9: permanent, and the method is kept.
    return secure(web.Response(status=308, headers={hdrs.LOCATION: f"{prefix}/console/"}))


async def console_page(request: web.Request) -> web.StreamResponse:
    response = web.FileResponse(
        CONSOLE_DIR / INDEX, headers={hdrs.CONTENT_TYPE: "text/html; charset=utf-8"}
    )
    response.headers[hdrs.CACHE_CONTROL] = "no-store"
    return secure(response)


async def console_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["asset"]
    media = ASSETS.get(name)
    if media is None:  # an allow-list: the name never reaches the file system otherwise
        raise NotFound("No such console file.")
    response = web.FileResponse(
        CONSOLE_DIR / name, headers={hdrs.CONTENT_TYPE: f"{media}; charset=utf-8"}
    )
    response.headers[hdrs.CACHE_CONTROL] = "no-cache"
    return secure(response)
