"""A real keygate in the test's process: settings, the running app, and the rig.

- :func:`make_settings` is a gateway on ``127.0.0.1:0`` with a fast change poll
  and last-used flush (``server`` and auth settings replaceable).
- :func:`start_keygate` builds the real app (:func:`keygate.gateway.http.app.build_app`),
  serves it on a real port and bootstraps the first admin: a :class:`Keygate`.
  ``serve_like`` serves it with ``keygate serve``'s runner defaults.
- :class:`Rig` is such a gateway in front of a :class:`~tests.support.upstreams.Recorder`,
  spoken to over raw sockets (the adversarial suite's harness).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp.abc import AbstractResolver
from aiohttp.test_utils import TestClient, TestServer

from keygate.config.settings import (
    AuthSettings,
    ForwardAuthSettings,
    MetricsSettings,
    RateLimitSettings,
    Route,
    ServerSettings,
    Settings,
    StoreSettings,
)
from keygate.gateway.auth import keyformat
from keygate.gateway.http.app import build_app
from keygate.gateway.http.server import KeygateRunner
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.service.bootstrap import create_first_admin
from keygate.gateway.state import gateway_key, webhook_resolver_key
from keygate.gateway.store.base import Store
from tests.support.raw import IO_TIMEOUT, Raw, Reply, exchange
from tests.support.secrets import secret
from tests.support.upstreams import Recorder


class KeygateTestServer(TestServer):
    """pytest-aiohttp's TestServer with keygate's own protocol (JSON parser errors)."""

    async def _make_runner(self, **kwargs: Any) -> KeygateRunner:
        return KeygateRunner(self.app, **kwargs)


class ServeLikeServer(KeygateTestServer):
    """The real app on a real port with ``keygate serve``'s runner defaults.

    aiohttp's TestServer forces ``handler_cancellation=True``; keygate serve
    passes no such option, so whatever KeygateRunner does by default is what
    production does, and what is tested here.
    """

    async def _make_runner(self, **kwargs: Any) -> KeygateRunner:
        kwargs.pop("handler_cancellation", None)
        return KeygateRunner(self.app, **kwargs)


def make_settings(
    where: Path,
    routes: tuple[Route, ...],
    store_url: str | None = None,
    *,
    server: Mapping[str, Any] | None = None,
    ratelimit: Mapping[str, Any] | None = None,
    forward_auth: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    **auth: Any,
) -> Settings:
    """Settings for a gateway under test; its SQLite store (unless ``store_url``) in ``where``."""
    return Settings(
        server=replace(ServerSettings(listen="127.0.0.1:0"), **(server or {})),
        store=StoreSettings(
            url=store_url or f"sqlite:///{where}/keygate.db", change_poll_interval=0.05
        ),
        auth=replace(AuthSettings(last_used_flush_interval=0.1), **auth),
        ratelimit=RateLimitSettings(**(ratelimit or {})),
        forward_auth=ForwardAuthSettings(**(forward_auth or {})),
        metrics=MetricsSettings(**(metrics or {})),
        routes=routes,
    )


def default_route(url: str, **extra: Any) -> tuple[Route, ...]:
    """One route, ``default``, at ``/`` to ``url``."""
    return (Route(name="default", prefix="/", upstream=url, **extra),)


def key_id(token: str) -> str:
    """The public key id of a (well-formed) token."""
    return keyformat.parse(token, "kg").key_id


@dataclass
class Keygate:
    """A running keygate app plus handles to its state and a bootstrapped admin."""

    client: TestClient
    settings: Settings
    admin_token: str

    @property
    def gw(self) -> Any:
        return self.client.server.app[gateway_key]

    @property
    def services(self) -> Services:
        return self.gw.services

    @property
    def port(self) -> int:
        port = self.client.port
        assert port is not None, "the gateway is not started"
        return port

    def actor(self) -> Actor:
        return Actor.cli()

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def make_key(self, groups: list[str], owner: str | None = None, **extra: Any) -> str:
        body: dict[str, Any] = {"groups": groups, **extra}
        if owner is not None:
            body["owner"] = owner
        actor = await self.admin_actor()
        issued = await self.services.keys.create(actor, body)
        return issued.token

    async def admin_actor(self) -> Actor:
        user = await self.gw.store.get_user("admin")
        return Actor(user.id, user.username, None, ("admin",), "test")


# pytest-aiohttp's aiohttp_client, or started_client outside a test's scope.
ClientStarter = Callable[[TestServer], Awaitable[TestClient]]
# The keygate_factory fixture: factory(routes, *, server=None, ratelimit=None, **auth).
GatewayFactory = Callable[..., Awaitable[Keygate]]


async def started_client(server: TestServer, **server_kwargs: Any) -> TestClient:
    """``server`` started with a client, for fixtures wider than one test (pytest-aiohttp's
    ``aiohttp_client`` is per test): the caller closes it."""
    await server.start_server(**server_kwargs)
    client = TestClient(server)
    await client.start_server()  # the server is started: only the client session opens
    return client


async def start_keygate(
    settings: Settings,
    start: ClientStarter,
    *,
    store: Store | None = None,
    serve_like: bool = False,
    admin_token: str | None = None,
    resolver: AbstractResolver | None = None,
) -> Keygate:
    """The real app served on a real port, its first admin bootstrapped.

    ``store``: an opened store lent to the app (a counting one, say).
    ``serve_like``: ``keygate serve``'s runner defaults rather than a test server's.
    ``admin_token``: the store has its admin already (another gateway on it made one).
    """
    app = build_app(settings, store=store)
    if resolver is not None:  # what webhook receivers' names resolve to
        app[webhook_resolver_key] = resolver
    client = await start((ServeLikeServer if serve_like else KeygateTestServer)(app))
    if admin_token is None:
        gw = app[gateway_key]
        admin_token = (await create_first_admin(ServiceContext(gw.store, settings.auth))).token
    return Keygate(client, settings, admin_token)


# The rig's server settings: short, so a test that must wait one out stays quick,
# yet long enough that no other test meets them on a busy machine.
SERVER_DEFAULTS: Mapping[str, Any] = {"header_timeout": 1.0, "body_idle_timeout": 1.0}
# A test marked ``@pytest.mark.brisk`` waits a timeout out on purpose: 0.2 s.
BRISK: Mapping[str, Any] = {"header_timeout": 0.2, "body_idle_timeout": 0.2}


@dataclass
class Rig:
    """A serve-like gateway on a real port in front of a recorder, spoken to byte for byte."""

    kg: Keygate
    up: Recorder

    @property
    def gw(self) -> Any:
        return self.kg.gw

    @property
    def port(self) -> int:
        return self.kg.port

    @property
    def settings(self) -> Settings:
        return self.kg.settings

    @property
    def client(self) -> TestClient:
        return self.kg.client

    async def key(self, groups: Iterable[str] = ("default",), **extra: Any) -> str:
        """A new key's token (registered as a secret no log line may carry)."""
        return secret(await self.kg.make_key(list(groups), **extra))

    async def raw(self) -> Raw:
        return await Raw.open(self.port)

    async def exchange(self, request: bytes, *, within: float = IO_TIMEOUT) -> Reply:
        """One request on a fresh connection; the first final reply."""
        return await exchange(self.port, request, within=within)


# The rig_factory fixture: make(*, routes=None, server=None, up=None, **auth).
RigFactory = Callable[..., Awaitable[Rig]]
