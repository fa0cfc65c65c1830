"""The admin sub-app (docs/reference.md#admin-api), mounted by the gateway app at
``server.admin_prefix``."""

from __future__ import annotations

from aiohttp import web

from keygate.admin.auth import admin_middleware
from keygate.admin.handlers.docs import ApiDocs, api_docs_key
from keygate.admin.routes import ENDPOINTS, public_matcher, register


def build_admin_app() -> web.Application:
    """The admin JSON API, its OpenAPI document and Swagger UI.

    Reads the gateway's state through ``request.config_dict``, so it must be
    mounted under the app that ``gateway.app.build_app`` builds.
    """
    app = web.Application(middlewares=[admin_middleware(is_public=public_matcher(ENDPOINTS))])
    app[api_docs_key] = ApiDocs(ENDPOINTS)
    register(app, ENDPOINTS)
    return app
