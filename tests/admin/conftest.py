"""Admin API fixtures: an HTTP helper, members made through the API, a roomy gateway."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

import orjson
import pytest
from aiohttp.test_utils import TestServer
from keygate.config.settings import Route
from multidict import CIMultiDictProxy

from tests.conftest import GatewayFactory, Keygate

PREFIX = "/_keygate"
API = PREFIX + "/api/v1"
_NO_BODY = object()


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    raw: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.raw)

    @property
    def code(self) -> str | None:
        """The error code of a JSON error body."""
        try:
            code = self.json["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None
        return code if isinstance(code, str) else None

    @property
    def details(self) -> dict[str, str]:
        return cast(dict[str, str], self.json["error"].get("details", {}))


def key_id(token: str) -> str:
    return token.split("_")[1]


class AdminApi:
    """Talks to the running gateway like a client would."""

    def __init__(self, kg: Keygate) -> None:
        self.kg = kg

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        json: Any = _NO_BODY,
        *,
        headers: dict[str, str] | None = None,
        data: Any = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if json is not _NO_BODY:
            data = orjson.dumps(json)
            all_headers.setdefault("Content-Type", "application/json")
        url = path if path.startswith(PREFIX) else API + path
        async with self.kg.client.request(
            method, url, headers=all_headers, data=data, params=params
        ) as response:
            return Reply(response.status, response.headers, await response.read())

    async def get(self, path: str, token: str, **kw: Any) -> Reply:
        return await self.call("GET", path, token, **kw)

    async def post(self, path: str, token: str, json: Any = _NO_BODY, **kw: Any) -> Reply:
        return await self.call("POST", path, token, json, **kw)

    async def patch(self, path: str, token: str, json: Any = _NO_BODY, **kw: Any) -> Reply:
        return await self.call("PATCH", path, token, json, **kw)

    async def delete(self, path: str, token: str, **kw: Any) -> Reply:
        return await self.call("DELETE", path, token, **kw)

    async def proxy(self, token: str, path: str = "/echo", method: str = "GET") -> Reply:
        """A request through the proxy to the echo upstream."""
        async with self.kg.client.request(method, path, headers=self.kg.bearer(token)) as response:
            return Reply(response.status, response.headers, await response.read())

    @property
    def admin(self) -> str:
        return self.kg.admin_token

    async def make_user(
        self, username: str, groups: list[str], role: str = "member"
    ) -> dict[str, Any]:
        reply = await self.post(
            "/users", self.admin, {"username": username, "groups": groups, "role": role}
        )
        assert reply.status == 201, reply.raw
        return cast(dict[str, Any], reply.json)

    async def make_key(self, owner: str, groups: list[str], **extra: Any) -> str:
        body = {"owner": owner, "groups": groups, **extra}
        reply = await self.post("/keys", self.admin, body)
        assert reply.status == 201, reply.raw
        return str(reply.json["token"])


async def create_key(api: AdminApi, token: str, **body: Any) -> dict[str, Any]:
    """POST /keys as ``token`` (groups default to ["default"]); the 201 body."""
    reply = await api.post("/keys", token, {"groups": ["default"], **body})
    assert reply.status == 201, reply.raw
    return cast(dict[str, Any], reply.json)


@dataclass
class Member:
    username: str
    token: str

    @property
    def key_id(self) -> str:
        return key_id(self.token)


async def make_member(
    api: AdminApi,
    username: str,
    user_groups: tuple[str, ...] = ("self-service", "default"),
    key_groups: tuple[str, ...] = ("self-service",),
) -> Member:
    await api.make_user(username, list(user_groups))
    return Member(username, await api.make_key(username, list(key_groups)))


@pytest.fixture
def api(keygate: Keygate) -> AdminApi:
    return AdminApi(keygate)


@pytest.fixture
async def alice(api: AdminApi) -> Member:
    """A self-service member: user groups self-service+default, key in self-service."""
    return await make_member(api, "alice")


@pytest.fixture
async def bob(api: AdminApi) -> Member:
    return await make_member(api, "bob")


@pytest.fixture
async def plain_token(keygate: Keygate) -> str:
    """A key with neither admin nor self-service: proxy traffic only."""
    return await keygate.make_key(["default"])


@pytest.fixture
async def roomy_api(keygate_factory: GatewayFactory, upstream: TestServer) -> AdminApi:
    """A gateway whose owners may hold many keys (pagination tests)."""
    route = Route(name="default", prefix="/", upstream=str(upstream.make_url("/")))
    return AdminApi(await keygate_factory((route,), max_keys_per_user=1000))


async def raw_request(kg: Keygate, request_head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes exactly as written (the client library would normalise the path)."""
    server = kg.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request_head.replace("\n", "\r\n").encode("latin-1") + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


async def poll_proxy_status(api: AdminApi, token: str, *, until: int, within: float) -> int:
    """Proxy status of ``token``, polled until it is ``until`` or ``within`` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        status = (await api.proxy(token)).status
        if status == until or loop.time() >= deadline:
            return status
        await asyncio.sleep(0.05)


# Modules whose tests run over both stores: everything that reads or writes
# records. Store-agnostic ones (the auth matrix, body parsing, OpenAPI) run once.
BOTH_STORES = frozenset(
    {
        "test_audit",
        "test_blocks",
        "test_eviction",
        "test_fuzz",
        "test_groups",
        "test_keys",
        "test_keys_rules",
        "test_pagination",
        "test_unstorable",
        "test_users",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" in metafunc.fixturenames:
        module = metafunc.module.__name__.rsplit(".", 1)[-1]
        kinds = ["sqlite", "postgres"] if module in BOTH_STORES else ["sqlite"]
        metafunc.parametrize("store_kind", kinds, indirect=True)


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def store_url(request: pytest.FixtureRequest, store_kind: str, tmp_path: Any) -> str:
    """The admin API is exercised over both stores, with the same tests."""
    if store_kind == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path}/keygate.db"
