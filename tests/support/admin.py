"""The admin API as a client talks to it: calls, their replies, members made through it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import orjson
from multidict import CIMultiDictProxy

from tests.support.gateway import Keygate, key_id

PREFIX = "/_keygate"
API = PREFIX + "/api/v1"
_NO_BODY = object()


@dataclass
class ApiReply:
    """A status, headers and body as the aiohttp client got them."""

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
    ) -> ApiReply:
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
            return ApiReply(response.status, response.headers, await response.read())

    async def get(self, path: str, token: str, **kw: Any) -> ApiReply:
        return await self.call("GET", path, token, **kw)

    async def post(self, path: str, token: str, json: Any = _NO_BODY, **kw: Any) -> ApiReply:
        return await self.call("POST", path, token, json, **kw)

    async def patch(self, path: str, token: str, json: Any = _NO_BODY, **kw: Any) -> ApiReply:
        return await self.call("PATCH", path, token, json, **kw)

    async def delete(self, path: str, token: str, **kw: Any) -> ApiReply:
        return await self.call("DELETE", path, token, **kw)

    async def proxy(self, token: str, path: str = "/echo", method: str = "GET") -> ApiReply:
        """A request through the proxy to the echo upstream."""
        async with self.kg.client.request(method, path, headers=self.kg.bearer(token)) as response:
            return ApiReply(response.status, response.headers, await response.read())

    async def proxy_refuses(self, token: str) -> bool:
        """Whether the proxy answers 401 to ``token`` now (a predicate to wait for)."""
        return (await self.proxy(token)).status == 401

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
