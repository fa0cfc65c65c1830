"""WebSocket (OWASP API2, API4): no key, no handshake; frames and closes relayed;
nothing left over."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from tests.support.gateway import Rig
from tests.support.polling import wait_for
from tests.support.raw import bearer, http
from tests.support.upstreams import MIB

WS_HEAD = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


@pytest.mark.parametrize(
    "headers",
    [[], [bearer("kg_" + "x" * 51)], [("X-API-Key", "nope")], [("Sec-WebSocket-Protocol", "kg")]],
    ids=["missing", "bad_checksum", "junk", "key_in_subprotocol_slot"],
)
async def test_websocket_upgrade_without_valid_key_is_401_before_upstream(
    rig: Rig, headers: list[tuple[str, str]]
) -> None:
    reply = await rig.exchange(http("GET", "/_up/ws", [*WS_HEAD, *headers]))
    assert reply.status == 401
    assert rig.up.seen == [] and rig.up.ws_handlers == 0


async def test_websocket_upgrade_with_unknown_key_is_401_before_upstream(rig: Rig) -> None:
    from keygate.gateway.auth import keyformat
    from tests.support.secrets import secret

    unknown = secret(keyformat.generate("kg")[0])
    reply = await rig.exchange(http("GET", "/_up/ws", [*WS_HEAD, bearer(unknown)]))
    assert reply.status == 401
    assert rig.up.seen == [] and rig.up.ws_handlers == 0


async def test_websocket_upgrade_forbidden_is_403_before_upstream(rig: Rig) -> None:
    rule = {"route": "default", "methods": ["POST"], "paths": ["/**"]}
    await rig.kg.services.groups.create(
        await rig.kg.admin_actor(), {"name": "poster", "rules": [rule]}
    )
    poster = await rig.key(["poster"])
    reply = await rig.exchange(http("GET", "/_up/ws", [*WS_HEAD, bearer(poster)]))
    assert reply.status == 403
    assert rig.up.seen == []


async def test_websocket_frames_are_relayed_both_ways(rig: Rig, token: str) -> None:
    async with rig.client.ws_connect("/_up/ws", headers=dict([bearer(token)])) as ws:
        await ws.send_str("hello")
        assert (await ws.receive(timeout=2)).data == "echo:hello"
        await ws.send_bytes(b"\x00\x01\x02")
        assert (await ws.receive(timeout=2)).data == b"\x02\x01\x00"
    seen = rig.up.last()
    assert seen.values("X-Keygate-User") == ["admin"]
    assert token not in repr(seen.headers)


async def test_websocket_client_close_code_reaches_upstream(rig: Rig, token: str) -> None:
    ws = await rig.client.ws_connect("/_up/ws", headers=dict([bearer(token)]))
    await ws.send_str("ping")
    await ws.receive(timeout=2)
    await ws.close(code=4001, message=b"client bye")
    await wait_for(lambda: rig.up.ws_closes == [4001], what="upstream saw 4001")


async def test_websocket_upstream_close_code_reaches_client(rig: Rig, token: str) -> None:
    async with rig.client.ws_connect("/_up/ws", headers=dict([bearer(token)])) as ws:
        await ws.send_str("close:4002")
        msg = await ws.receive(timeout=2)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4002 or msg.data == 4002


async def test_websocket_oversize_message_from_client_is_1009(rig: Rig, token: str) -> None:
    async with rig.client.ws_connect("/_up/ws", headers=dict([bearer(token)])) as ws:
        # The gateway may close before the whole message is written: the close
        # frame it sent first is still there to read.
        with contextlib.suppress(ConnectionError):
            await ws.send_bytes(b"x" * (4 * MIB + 1))
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    await wait_for(lambda: len(rig.up.ws_closes) == 1, what="upstream closed too")


async def test_websocket_oversize_message_from_upstream_is_1009(rig: Rig, token: str) -> None:
    async with rig.client.ws_connect(
        "/_up/ws", headers=dict([bearer(token)]), max_msg_size=16 * MIB
    ) as ws:
        await ws.send_str("big")
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


def _tasks() -> int:
    return len(asyncio.all_tasks())


@pytest.mark.parametrize("who", ["client", "upstream", "client_vanishes"])
async def test_websocket_no_orphan_tasks_after_close(rig: Rig, token: str, who: str) -> None:
    # Warm the connection machinery, then measure.
    assert (await rig.exchange(http("GET", "/warm", [bearer(token)]))).status == 200
    await wait_for(lambda: rig.up.open_connections() <= 1, what="warm-up settled")
    baseline = _tasks()
    for _ in range(5):
        ws = await rig.client.ws_connect("/_up/ws", headers=dict([bearer(token)]))
        await ws.send_str("x")
        await ws.receive(timeout=2)
        if who == "client":
            await ws.close(code=1000)
        elif who == "upstream":
            await ws.send_str("close:1000")
            await ws.receive(timeout=2)
            await ws.close()
        else:
            ws._response.connection.transport.abort()  # type: ignore[union-attr]
            await ws.close()
    await wait_for(lambda: len(rig.up.ws_closes) == 5, what="upstream sockets closed")
    await wait_for(lambda: _tasks() <= baseline, within=5.0, what="tasks back to baseline")
    assert rig.gw.gates["default"].in_flight == 0
