"""Build the aiohttp application: middlewares, lifecycle, admin sub-app, proxy route."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from keygate.config.settings import Settings
from keygate.gateway.auth.cache import KeyCache
from keygate.gateway.auth.changes import ChangeWatcher
from keygate.gateway.auth.credentials import Sources
from keygate.gateway.auth.keyids import KeyIdSet
from keygate.gateway.auth.policy import RouteTable
from keygate.gateway.auth.usage import UsageRecorder
from keygate.gateway.auth.verify import Verifier
from keygate.gateway.errors import BadFraming, KeygateError, MethodNotAllowed, NotFound, TooLarge
from keygate.gateway.http.server import check_framing
from keygate.gateway.pipeline import proxy_handler
from keygate.gateway.request.headers import RequestIds, request_id_or_new
from keygate.gateway.service import ServiceContext, Services
from keygate.gateway.state import Gateway, gateway_key, request_id_key
from keygate.gateway.store import open_store
from keygate.gateway.store.base import Store
from keygate.gateway.upstream.client import RouteGate, upstream_session
from yarl import URL

log = logging.getLogger("keygate")

X_REQUEST_ID = "X-Request-Id"


def error_response(exc: KeygateError) -> web.Response:
    response = web.Response(
        status=exc.status, body=exc.body(), content_type="application/json", headers=exc.headers
    )
    return response


def _refusal(request: web.Request, exc: KeygateError) -> web.Response:
    response = error_response(exc)
    if isinstance(exc, BadFraming) or not request.content.is_eof():
        # The body of a refused request is still on its way (or, after an
        # "Expect: 100-continue" we did not answer, never coming): close
        # instead of draining it or guessing where the next request starts;
        # after a framing refusal that is in doubt whatever the body did.
        response.force_close()
    return response


def _from_http_exception(exc: web.HTTPException) -> KeygateError:
    if exc.status == 404:
        return NotFound("Not found.")
    if exc.status == 405:
        return MethodNotAllowed()
    if exc.status == 413:
        return TooLarge()
    error = KeygateError(exc.reason or "Error.", code="_".join(exc.reason.lower().split()))
    error.status = exc.status  # type: ignore[misc]
    return error


def error_middleware(ids: RequestIds) -> Middleware:
    """Render every refusal as SPEC's JSON error, never a traceback; give every
    request its X-Request-Id (the client's, or a new one from ``ids``)."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        request[request_id_key] = request_id_or_new(request.headers.get(X_REQUEST_ID), ids)
        if not request.rel_url.raw_path and request.match_info.http_exception is not None:
            # An absolute-form target with an empty path ("GET http://h HTTP/1.1")
            # means "/" (RFC 9110 §4.2.3), but aiohttp's router matches no route for it.
            handler = proxy_handler
        try:
            check_framing(request)
            return await handler(request)
        except KeygateError as exc:
            return _refusal(request, exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _refusal(request, _from_http_exception(exc))
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path[:200])
            return error_response(KeygateError())

    return middleware


async def _expect_later(request: web.Request) -> None:
    """aiohttp's default answers "100 Continue" before any check; we answer later."""


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(request_id_key)
    if request_id is not None:
        response.headers[X_REQUEST_ID] = request_id


def build_app(settings: Settings, *, store: Store | None = None) -> web.Application:
    """The whole gateway as one aiohttp application.

    ``store`` lets tests share an opened store; otherwise one is opened from
    ``settings.store.url`` inside ``cleanup_ctx`` (never at import or before a fork).
    """
    from keygate.admin.app import build_admin_app  # the one place gateway mounts admin

    app = web.Application(
        middlewares=[error_middleware(RequestIds())],
        handler_args={
            # aiohttp arms this timer at connection start and re-arms it after
            # each response; partial data does not reset it, so it is also the
            # deadline for a complete request head (slowloris).
            "keepalive_timeout": settings.server.header_timeout,
            # After a refusal aiohttp reads and discards the rest of the body
            # (so closing does not reset the answer away) for up to this long;
            # a body that stalls is bounded here as when it is forwarded.
            "lingering_time": min(10.0, settings.server.body_idle_timeout),
            "max_line_size": settings.server.max_line_bytes,
            "max_field_size": settings.server.max_header_bytes,
            "max_headers": settings.server.max_header_count,
            # SECURITY: bodies are handed over as they arrived. A proxy relays a
            # gzip upload byte for byte; decoding it here once sent the decoded
            # bytes under the client's (compressed) length, and the upstream
            # read the rest as a second request. The admin API decodes itself.
            "auto_decompress": False,
        },
    )
    app.on_response_prepare.append(_add_request_id)

    async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
        own_store = store is None
        st = store if store is not None else open_store(
            settings.store.url, pool_size=settings.store.pool_size
        )
        if own_store:
            await st.open()
        auth = settings.auth
        cache = KeyCache(auth.cache_size, auth.cache_ttl, auth.negative_cache_ttl)
        usage = UsageRecorder(st, auth.last_used_flush_interval)
        gw = Gateway(
            settings=settings,
            store=st,
            cache=cache,
            usage=usage,
            verifier=Verifier(st, cache, usage, auth.key_prefix),
            routes=RouteTable(settings.routes),
            sources=Sources.parse(auth.sources),
        )
        gw.services = Services.build(
            ServiceContext(
                store=st,
                auth=auth,
                route_names=[r.name for r in settings.routes],
                notify=gw.apply_change,
            )
        )
        for route in settings.routes:
            gw.gates[route.name] = RouteGate(route)
            gw.upstream_base[route.name] = URL(route.upstream)
        await gw.reload_policy()
        watcher = ChangeWatcher(st, gw.apply_change, settings.store.change_poll_interval)
        await watcher.start()
        # Read after the watcher noted its starting point: a key created
        # meanwhile is in this snapshot or in a notice still to come.
        gw.verifier.key_ids = KeyIdSet(await st.key_ids())
        gw.verifier.catch_up = watcher.tick
        # PostgreSQL pushes notices (LISTEN/NOTIFY); the poll loop stays as the
        # fallback while the listener is down.
        make_listener = getattr(st, "listener", None)
        listener = make_listener(watcher.poll) if make_listener is not None else None
        if listener is not None:
            await listener.start()
        usage.start()
        app[gateway_key] = gw
        try:
            yield
        finally:
            if listener is not None:
                await listener.stop()
            await watcher.stop()
            # Last flush before the store closes (cleanup runs in reverse order).
            await usage.stop()
            if own_store:
                await st.close()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        gw = app[gateway_key]
        # One shared keep-alive session: no redirects, no decompression.
        gw.session = upstream_session()
        try:
            yield
        finally:
            await gw.session.close()

    app.cleanup_ctx.append(gateway_ctx)
    app.cleanup_ctx.append(session_ctx)
    app.add_subapp(settings.server.admin_prefix, build_admin_app())
    # No 100 Continue before the handler: proxy_handler invites the body once
    # the request is authenticated and allowed (RFC 9110 §10.1.1).
    # [\s\S], not ".": a decoded path may hold a line feed, and the proxy
    # handler, not the router, refuses it (a 400 bad_path, as the edge answers).
    app.router.add_route("*", r"/{tail:[\s\S]*}", proxy_handler, expect_handler=_expect_later)
    return app
