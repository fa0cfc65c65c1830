"""Public documentation: the OpenAPI document and Swagger UI from local assets (no CDN)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from aiohttp import hdrs, web
from swagger_ui_bundle import swagger_ui_path

from keygate.admin.context import gateway
from keygate.admin.openapi import as_openapi_30, document
from keygate.admin.responses import JSON
from keygate.gateway.errors import NotFound

if TYPE_CHECKING:
    from keygate.admin.routes import Endpoint

ASSET_DIR = Path(swagger_ui_path)
# Only what the page loads; the bundle's own index.html and initializer point at
# a public demo document, and source maps are not needed.
ASSETS: dict[str, str] = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
INIT_ASSET = "keygate-init.js"
# Read from the page rather than baked in, so this script is a constant file
# and the page needs no inline script (CSP below).
INIT_JS = """window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout"
  });
});
"""
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
)


@dataclass(eq=False)
class ApiDocs:
    """The route table, and its documents rendered once per (version, prefix, sources, routes)."""

    endpoints: tuple[Endpoint, ...]
    _rendered: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], bytes] = field(
        default_factory=dict
    )

    def render(
        self, version: str, prefix: str, sources: Sequence[str], routes: Sequence[str]
    ) -> bytes:
        cache_key = (version, prefix, tuple(sources), tuple(routes))
        body = self._rendered.get(cache_key)
        if body is None:
            doc = document(self.endpoints, prefix, sources, routes)
            if version == "3.0":
                doc = as_openapi_30(doc)
            body = orjson.dumps(doc)
            self._rendered[cache_key] = body
        return body


api_docs_key = web.AppKey("keygate_admin_docs", ApiDocs)


def _document(request: web.Request, version: str) -> web.Response:
    settings = gateway(request).settings
    body = request.app[api_docs_key].render(
        version,
        settings.server.admin_prefix,
        settings.auth.sources,
        [route.name for route in settings.routes],
    )
    return web.Response(body=body, content_type=JSON)


async def openapi_json(request: web.Request) -> web.Response:
    return _document(request, "3.1")


async def openapi_30_json(request: web.Request) -> web.Response:
    return _document(request, "3.0")


async def docs_page(request: web.Request) -> web.Response:
    prefix = gateway(request).settings.server.admin_prefix.rstrip("/")
    # The bundled Swagger UI (5.x, pinned in pyproject.toml) renders OpenAPI 3.1.
    spec = "/openapi.json"
    static = html.escape(f"{prefix}/docs/static/", quote=True)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>keygate admin API</title>
<link rel="stylesheet" href="{static}swagger-ui.css">
<link rel="icon" type="image/png" href="{static}favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="{static}favicon-16x16.png" sizes="16x16">
</head>
<body>
<div id="swagger-ui" data-spec-url="{html.escape(prefix + spec, quote=True)}"></div>
<script src="{static}swagger-ui-bundle.js"></script>
<script src="{static}swagger-ui-standalone-preset.js"></script>
<script src="{static}{INIT_ASSET}"></script>
</body>
</html>
"""
    response = web.Response(text=page, content_type="text/html")
    response.headers["Content-Security-Policy"] = CSP
    response.headers[hdrs.X_CONTENT_TYPE_OPTIONS] = "nosniff"
    return response


async def docs_static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["asset"]
    if name == INIT_ASSET:
        response: web.StreamResponse = web.Response(text=INIT_JS, content_type="text/javascript")
    elif name in ASSETS:  # an allow-list: the name never reaches the file system otherwise
        response = web.FileResponse(ASSET_DIR / name, headers={hdrs.CONTENT_TYPE: ASSETS[name]})
    else:
        raise NotFound("No such asset.")
    response.headers[hdrs.CACHE_CONTROL] = "public, max-age=3600"
    response.headers[hdrs.X_CONTENT_TYPE_OPTIONS] = "nosniff"
    return response
