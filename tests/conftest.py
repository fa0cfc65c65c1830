"""Shared fixtures: a real keygate app, real aiohttp upstreams, real SQLite files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from keygate.config.settings import AuthSettings, Route, ServerSettings, Settings, StoreSettings
from keygate.gateway.http.app import build_app
from keygate.gateway.http.server import KeygateRunner
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.service.bootstrap import create_first_admin
from keygate.gateway.state import gateway_key
from keygate.gateway.store.sqlite.store import SQLiteStore

from tests.pg import pg_database_fixture, pg_url_fixture  # noqa: F401 - fixtures


async def echo(request: web.Request) -> web.Response:
    """What the upstream received, as JSON (httpx's echo app, aiohttp style)."""
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path.split("?", 1)[0],
            "query": request.query_string,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        },
        headers={"X-Upstream": "echo"},
    )


def make_echo_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def header_values(echoed: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echoed["headers"] if k.lower() == name.lower()]


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    return await aiohttp_server(make_echo_app(), host="127.0.0.1")


class KeygateTestServer(TestServer):
    """pytest-aiohttp's TestServer with keygate's own protocol (JSON parser errors)."""

    async def _make_runner(self, **kwargs: Any) -> KeygateRunner:
        return KeygateRunner(self.app, **kwargs)


def make_settings(
    tmp_path: Path, routes: tuple[Route, ...], store_url: str | None = None, **auth: Any
) -> Settings:
    return Settings(
        server=ServerSettings(listen="127.0.0.1:0"),
        store=StoreSettings(
            url=store_url or f"sqlite:///{tmp_path}/keygate.db", change_poll_interval=0.05
        ),
        auth=replace(AuthSettings(last_used_flush_interval=0.1), **auth),
        routes=routes,
    )


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


GatewayFactory = Callable[..., Awaitable[Keygate]]


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store every app under test uses: SQLite, or with KEYGATE_TEST_STORE=postgres
    a freshly emptied PostgreSQL database (the same suite over both stores)."""
    if os.environ.get("KEYGATE_TEST_STORE") == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path}/keygate.db"


@pytest.fixture
async def keygate_factory(
    tmp_path: Path, store_url: str, aiohttp_client: Callable[..., Awaitable[TestClient]]
) -> AsyncIterator[GatewayFactory]:
    async def factory(routes: tuple[Route, ...], **auth: Any) -> Keygate:
        settings = make_settings(tmp_path, routes, store_url, **auth)
        client = await aiohttp_client(KeygateTestServer(build_app(settings)))
        gw = client.server.app[gateway_key]
        issued = await create_first_admin(ServiceContext(gw.store, settings.auth))
        return Keygate(client, settings, issued.token)

    yield factory


@pytest.fixture
async def keygate(keygate_factory: GatewayFactory, upstream: TestServer) -> Keygate:
    """One default route to the echo upstream."""
    route = Route(name="default", prefix="/", upstream=str(upstream.make_url("/")))
    return await keygate_factory((route,))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    st = SQLiteStore(tmp_path / "store.db")
    await st.open()
    yield st
    await st.close()
