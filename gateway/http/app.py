"""Build the aiohttp application: middlewares, one lifecycle context per resource,
the admin sub-app, the proxy route."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractResolver
from aiohttp.typedefs import Middleware

from keygate.config.settings import Settings
from keygate.gateway.auth.cache import KeyCache
from keygate.gateway.auth.changes import ChangeFeed
from keygate.gateway.auth.credentials import Sources
from keygate.gateway.auth.policy import RouteTable
from keygate.gateway.auth.usage import UsageRecorder
from keygate.gateway.auth.verify import Verifier
from keygate.gateway.errors import KeygateError, MethodNotAllowed, NotFound, TooLarge
from keygate.gateway.forwardauth import AUTH_PATH
from keygate.gateway.http.clientip import trusted_networks
from keygate.gateway.http.forwardauth import forward_auth_handler
from keygate.gateway.http.framing import check_framing
from keygate.gateway.http.handler import proxy_handler
from keygate.gateway.http.server import handler_limits
from keygate.gateway.limits.counts import QuotaCounts
from keygate.gateway.limits.limiter import Limiter
from keygate.gateway.limits.local import LocalLimiter
from keygate.gateway.limits.notices import no_notice
from keygate.gateway.limits.usage import LEGACY, LEGACY_NAMES
from keygate.gateway.metrics.counts import ADMIN, ADMIN_MODE, PROXY, Counts
from keygate.gateway.metrics.exposition import PUBLISH_INTERVAL, Publisher
from keygate.gateway.pipeline import internal_error
from keygate.gateway.request.headers import X_REQUEST_ID, RequestIds, request_id_or_new
from keygate.gateway.request.pathnorm import is_under
from keygate.gateway.service import ServiceContext, Services
from keygate.gateway.state import (
    Gateway,
    KeyMemory,
    RouteNames,
    changes_key,
    deliverer_key,
    error_code_key,
    gateway_key,
    key_id_key,
    limiter_key,
    metrics_publisher_key,
    mode_key,
    pool_key,
    ratelimit_key,
    request_id_key,
    request_ids_key,
    route_key,
    session_key,
    store_key,
    usage_key,
    webhook_resolver_key,
)
from keygate.gateway.store import open_store
from keygate.gateway.store.base import Store
from keygate.gateway.upstream.client import upstream_session
from keygate.gateway.upstream.gate import route_gates
from keygate.gateway.upstream.pool import UpstreamPool
from keygate.gateway.webhooks.deliverer import Deliverer
from keygate.gateway.webhooks.traffic import TrafficNotices

log = logging.getLogger("keygate")

def error_response(exc: KeygateError) -> web.Response:
    response = web.Response(
        status=exc.status, body=exc.body(), content_type="application/json", headers=exc.headers
    )
    return response


def _refusal(request: web.Request, exc: KeygateError) -> web.Response:
    request[error_code_key] = exc.code
    response = error_response(exc)
    if exc.closes_connection or not request.content.is_eof():
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
    """Render every refusal as the JSON error (docs/reference.md#status-codes-and-errors),
    never a traceback; give every request its X-Request-Id (the client's, or a
    new one from ``ids``); count it in the metrics when they are on."""

    async def handle(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
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
            return error_response(internal_error(request.method, request.raw_path))

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        request[request_id_key] = request_id_or_new(request.headers.get(X_REQUEST_ID), ids)
        gw = request.app.get(gateway_key)
        if gw is None or gw.metrics is None:
            return await handle(request, handler)
        counts = gw.metrics
        admin_prefix = gw.settings.server.admin_prefix
        counts.in_flight += 1
        started = time.monotonic()
        status = CLIENT_GONE
        try:
            response = await handle(request, handler)
            status = response.status
            return response
        finally:
            counts.in_flight -= 1
            _count(request, counts, status, time.monotonic() - started, admin_prefix)

    return middleware


# The status a request is counted with when its client left before the answer
# (nginx's 499).
CLIENT_GONE = 499


def _count(
    request: web.Request, counts: Counts, status: int, seconds: float, admin_prefix: str
) -> None:
    route = request.get(route_key)
    mode = request.get(mode_key, PROXY)
    if route is None and is_under(request.path, admin_prefix):
        route, mode = ADMIN, ADMIN_MODE
    counts.request(
        route,
        request.method,
        status,
        seconds,
        request.get(error_code_key),
        request.get(key_id_key),
        mode,
    )


async def _expect_later(request: web.Request) -> None:
    """aiohttp's default answers "100 Continue" before any check; we answer later."""


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(request_id_key)
    if request_id is not None:
        response.headers[X_REQUEST_ID] = request_id


async def _add_ratelimit_fields(request: web.Request, response: web.StreamResponse) -> None:
    """A counted request's RateLimit fields, last (as the edge writes them:
    gateway/http/edge/wire.py); legacy ones replace an upstream's."""
    usage = request.get(ratelimit_key)
    if usage is None or not usage.fields:
        return
    headers = response.headers
    if request.app[gateway_key].limiter.mode in LEGACY:
        for name in LEGACY_NAMES:
            headers.popall(name, None)
    for name, value in usage.fields:
        headers.add(name, value)


Context = Callable[[web.Application], AsyncIterator[None]]


def lifecycle(
    settings: Settings, shared_store: Store | None = None, metrics_dir: str | None = None
) -> list[Context]:
    """One ``cleanup_ctx`` per resource, in the order they depend on each other.

    Each opens one thing, publishes it under its own app key, and closes it
    when the app stops — or at once, if starting it failed part-way. Cleanup
    runs in reverse: the change feed stops, the usage batcher makes its last
    flush, and only then the store closes.
    """
    auth = settings.auth
    bell = Bell()

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        if shared_store is not None:  # a test's store: opened and closed by the test
            app[store_key] = shared_store
            yield
            return
        store = open_store(
            settings.store.url,
            pool_size=settings.store.pool_size,
            loop_reads=settings.store.sqlite_loop_reads,
        )
        await store.open()  # closes what it opened itself if it fails
        app[store_key] = store
        try:
            yield
        finally:
            await store.close()

    async def usage_ctx(app: web.Application) -> AsyncIterator[None]:
        usage = UsageRecorder(
            app[store_key],
            auth.last_used_flush_interval,
            auth.last_used_resolution,
            memory=auth.cache_size,
        )
        usage.start()
        app[usage_key] = usage
        try:
            yield
        finally:
            await usage.stop()  # the last flush

    async def limiter_ctx(app: web.Application) -> AsyncIterator[None]:
        limiter = make_limiter(settings, app[store_key], app[usage_key])
        await limiter.start()
        app[limiter_key] = limiter
        try:
            yield
        finally:
            await limiter.stop()

    async def changes_ctx(app: web.Application) -> AsyncIterator[None]:
        store = app[store_key]
        cache = KeyCache(
            auth.cache_size, auth.cache_ttl, auth.negative_cache_ttl, auth.stale_if_error
        )
        memory = await KeyMemory.load(store, cache)
        feed = ChangeFeed(store, memory.from_feed, settings.store.change_poll_interval)
        await feed.start()
        try:
            # Read after the feed noted its starting point: a key created
            # meanwhile is in this snapshot or in a notice still to come.
            memory.key_ids.update(await store.key_ids())
            await memory.load_imported()
            app[changes_key] = feed
            app[gateway_key] = _gateway(
                settings,
                store,
                memory,
                app[usage_key],
                feed,
                app[limiter_key],
                bell,
                app.get(webhook_resolver_key),
            )
            # Started: from now on the store's outages and full disk are logged
            # once each (store/health.py); a failure before this is start-up's.
            store.health.reporting = True
            yield
        finally:
            await feed.stop()

    async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
        # Off the request path: a background task (docs/webhooks.md#delivery).
        deliverer = Deliverer(
            app[store_key],
            settings.webhooks,
            resolver=app.get(webhook_resolver_key),
            counts=app[gateway_key].metrics,
        )
        bell.ring = deliverer.ring
        traffic = TrafficNotices(app[store_key], settings.webhooks.cooldown, deliverer.ring)
        app[gateway_key].notice = traffic
        await deliverer.start()
        traffic.start()
        app[deliverer_key] = deliverer
        try:
            yield
        finally:
            app[gateway_key].notice = no_notice
            await traffic.stop()
            await deliverer.stop()
            bell.ring = _silent

    async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
        pool = UpstreamPool(idle_timeout=UPSTREAM_KEEPALIVE)
        app[pool_key] = pool
        try:
            yield
        finally:
            await pool.close()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        session = upstream_session(keepalive_timeout=UPSTREAM_KEEPALIVE)
        app[session_key] = session
        try:
            yield
        finally:
            await session.close()

    async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
        """With several workers: this one's numbers, published to their directory
        (gateway/metrics/exposition.py) every PUBLISH_INTERVAL and as it stops."""
        gw = app[gateway_key]
        counts = gw.metrics
        if counts is None or metrics_dir is None:
            yield
            return
        publisher = Publisher(metrics_dir)
        app[metrics_publisher_key] = publisher
        publisher.publish(gw, counts)

        async def publish() -> None:
            while True:
                await asyncio.sleep(PUBLISH_INTERVAL)
                publisher.publish(gw, counts)

        task = asyncio.create_task(publish())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            publisher.publish(gw, counts)  # the last requests of a stopping worker
            publisher.close()

    return [
        store_ctx,
        usage_ctx,
        limiter_ctx,
        changes_ctx,
        webhooks_ctx,
        metrics_ctx,
        pool_ctx,
        session_ctx,
    ]


def make_limiter(settings: Settings, store: Store, usage: UsageRecorder) -> Limiter:
    """The ``ratelimit.backend``; its quota counts flush with the last-used batcher."""
    config = settings.ratelimit
    counts = QuotaCounts(store, settings.auth.cache_size)
    usage.also_flush(counts.flush)
    if config.backend == "redis":
        from keygate.gateway.limits.redis import RedisLimiter  # only this backend needs redis

        return RedisLimiter(
            counts,
            config.headers,
            url=config.redis_url,
            prefix=config.redis_prefix,
            timeout=config.redis_timeout,
            fail_open=config.fail_open,
        )
    return LocalLimiter(counts, config.headers, settings.auth.cache_size)


def _silent() -> None:
    """No deliverer (yet, or any more)."""


class Bell:
    """Wakes this process's deliverer after a write (the services ring it)."""

    __slots__ = ("ring",)

    def __init__(self) -> None:
        self.ring: Callable[[], None] = _silent

    def __call__(self) -> None:
        self.ring()


# Seconds an idle upstream connection is kept for reuse.
UPSTREAM_KEEPALIVE = 15.0


def _gateway(
    settings: Settings,
    store: Store,
    memory: KeyMemory,
    usage: UsageRecorder,
    feed: ChangeFeed,
    limiter: Limiter,
    bell: Bell,
    resolver: AbstractResolver | None,
) -> Gateway:
    auth = settings.auth
    verifier = Verifier(
        store,
        memory.cache,
        usage,
        auth.key_prefix,
        key_ids=memory.key_ids,
        catch_up=feed.tick,
        imported=memory.imported,
    )
    route_names = RouteNames(settings.routes)
    services = Services.build(
        ServiceContext(
            store=store,
            auth=auth,
            route_names=route_names,
            notify=memory.apply,
            webhooks=settings.webhooks,
            resolver=resolver,
            ring=bell,
        )
    )
    return Gateway(
        settings=settings,
        store=store,
        memory=memory,
        usage=usage,
        verifier=verifier,
        routes=RouteTable(settings.routes),
        sources=Sources.parse(auth.sources),
        services=services,
        gates=route_gates(settings.routes, {}),
        route_names=route_names,
        limiter=limiter,
        trusted=trusted_networks(settings.server.trusted_proxies),
        metrics=Counts() if settings.metrics.enabled else None,
    )


def build_app(
    settings: Settings, *, store: Store | None = None, metrics_dir: str | None = None
) -> web.Application:
    """The whole gateway as one aiohttp application.

    ``store`` lets tests share an opened store; otherwise one is opened from
    ``settings.store.url`` inside ``cleanup_ctx`` (never at import or before a fork).
    ``metrics_dir`` is the directory the supervisor's workers share their
    metrics in (gateway/metrics/exposition.py); None for a single process.
    """
    from keygate.admin.app import build_admin_app  # the one place gateway mounts admin

    ids = RequestIds()  # one source per process: the edge and aiohttp's refusals use it too
    app = web.Application(
        middlewares=[error_middleware(ids)],
        handler_args={
            **handler_limits(settings.server),
            # SECURITY: bodies are handed over as they arrived. A proxy relays a
            # gzip upload byte for byte; decoding it here once sent the decoded
            # bytes under the client's (compressed) length, and the upstream
            # read the rest as a second request. The admin API decodes itself.
            "auto_decompress": False,
        },
    )
    app.on_response_prepare.append(_add_request_id)
    app.on_response_prepare.append(_add_ratelimit_fields)

    app[request_ids_key] = ids
    for ctx in lifecycle(settings, store, metrics_dir):
        app.cleanup_ctx.append(ctx)
    # Before the admin sub-app: its router would take these paths, and its
    # middleware refuses the dot segments a forwarded path may hold, which
    # forward-auth must judge as proxy mode does (docs/forward-auth.md).
    admin_prefix = settings.server.admin_prefix
    app.router.add_route("*", admin_prefix + AUTH_PATH, forward_auth_handler)
    app.router.add_route("*", admin_prefix + AUTH_PATH + r"/{tail:[\s\S]*}", forward_auth_handler)
    app.add_subapp(admin_prefix, build_admin_app())
    # No 100 Continue before the handler: proxy_handler invites the body once
    # the request is authenticated and allowed (RFC 9110 §10.1.1).
    # [\s\S], not ".": a decoded path may hold a line feed, and the proxy
    # handler, not the router, refuses it (a 400 bad_path, as the edge answers).
    app.router.add_route("*", r"/{tail:[\s\S]*}", proxy_handler, expect_handler=_expect_later)
    return app
