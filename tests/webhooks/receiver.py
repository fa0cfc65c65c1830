"""A webhook receiver on 127.0.0.1 for the webhook tests: it records every
delivery and answers as its path says.

``/ok`` 200; ``/fail/N`` 500 for the first N deliveries of each webhook-id,
then 200; ``/redirect`` 302 to ``/ok``; ``/gone`` 410; ``/busy`` 429 with
``Retry-After: 2`` once per webhook-id, then 200; ``/hang`` never answers;
``/big`` 500 with a 5000-byte body; ``/hang1`` holds the first delivery of
each webhook-id until ``release`` is set, then answers 200.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def msg_id(self) -> str:
        return self.headers["webhook-id"]

    def verify(self, secret: str) -> Any:
        """As a receiver would: the standardwebhooks package, unchanged."""
        return Webhook(secret).verify(self.body, self.headers)


@dataclass
class Receiver:
    server: TestServer | None = None
    got: list[Delivery] = field(default_factory=list)
    seen: Counter[tuple[str, str]] = field(default_factory=Counter)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}{path}"

    def at(self, path: str) -> list[Delivery]:
        return [d for d in self.got if d.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.path
        d = Delivery(path, {k.lower(): v for k, v in request.headers.items()}, body)
        self.got.append(d)
        self.seen[(path, d.headers.get("webhook-id", ""))] += 1
        count = self.seen[(path, d.headers.get("webhook-id", ""))]
        if path.startswith("/fail/"):
            return web.Response(status=500 if count <= int(path.split("/")[2]) else 200)
        if path == "/redirect":
            return web.Response(status=302, headers={"Location": "/ok"})
        if path == "/gone":
            return web.Response(status=410)
        if path == "/busy":
            if count == 1:
                return web.Response(status=429, headers={"Retry-After": "2"})
            return web.Response(status=200)
        if path == "/hang":
            await asyncio.sleep(3600)
        if path == "/hang1" and count == 1:
            await self.release.wait()
        if path == "/big":
            return web.Response(status=500, body=b"x" * 5000)
        return web.Response(status=200, text="thanks")


async def start_receiver() -> Receiver:
    receiver = Receiver()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    receiver.server = server
    return receiver
