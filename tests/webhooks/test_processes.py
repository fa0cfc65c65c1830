"""The deliverer in ``keygate serve``: a kill -9 loses nothing, and several
workers deliver each event once (docs/webhooks.md#delivery)."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.polling import wait_for
from tests.support.processes import node_env, run_keygate, serve_node
from tests.support.upstreams import Recorder
from tests.webhooks.receiver import Receiver

HOOKS = {
    "KEYGATE_WEBHOOKS_ALLOW_HTTP": "true",
    "KEYGATE_WEBHOOKS_ALLOW_PRIVATE": "true",
    "KEYGATE_WEBHOOKS_TIMEOUT": "1",
    "KEYGATE_WEBHOOKS_POLL_INTERVAL": "0.05",
    "KEYGATE_WEBHOOKS_RETRY_SCHEDULE": "0.2,0.2,0.2",
}


async def api(method: str, url: str, token: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        assert resp.status < 300, await resp.text()
        return await resp.json()


async def test_kill_9_during_a_delivery_delivers_after_restart(
    tmp_path: Path, upstream: Recorder, receiver: Receiver
) -> None:
    env = node_env(f"sqlite:///{tmp_path}/kg.db", **HOOKS)
    node = await serve_node(tmp_path, env, upstream.url, name="first")
    token = node.admin_token
    assert token is not None
    keys = f"{node.url}/_keygate/api/v1/keys"
    try:
        made = await api(
            "POST", keys, token, {"groups": ["default"], "webhook_url": receiver.url("/hang1")}
        )
        # The event is committed and its first attempt is in flight: kill -9 now.
        await wait_for(lambda: receiver.at("/hang1"), within=10, what="the first attempt")
    finally:
        node.stop(signal.SIGKILL)
    again = await serve_node(tmp_path, env, upstream.url, name="second")
    try:
        kid = made["key"]["id"]

        async def delivered() -> Any:
            found = await api("GET", f"{again.url}/_keygate/api/v1/keys/{kid}/webhook-deliveries",
                              token)  # fmt: skip
            items = found["items"]
            return items if items and items[0]["status"] == "delivered" else None

        await wait_for(delivered, within=30, every=0.1, what="delivery after the restart")
        [d] = await delivered()
        got = receiver.at("/hang1")
        # One request per attempt record, all of one event.
        assert d["attempts"] == len(got) == 2
        assert len({g.msg_id for g in got}) == 1
        got[1].verify(made["webhook_secret"])
        for line in (tmp_path / "first.stderr").read_text().splitlines() + again.stderr().split(
            "\n"
        ):
            assert made["webhook_secret"] not in line and made["token"] not in line
    finally:
        assert again.stop() == 0, again.stderr()


async def test_two_workers_deliver_each_event_once(
    upstream: Recorder, receiver: Receiver, either_store: str, tmp_path: Path
) -> None:
    """SQLite: a lease elects one worker; PostgreSQL: both claim, SKIP LOCKED."""
    env = node_env(either_store, **HOOKS)
    node = await serve_node(tmp_path, env, upstream.url, workers=2)
    token = node.admin_token
    assert token is not None
    keys = f"{node.url}/_keygate/api/v1/keys"
    try:
        for i in range(5):
            made = await api(
                "POST", keys, token, {"groups": ["default"], "webhook_url": receiver.url("/ok")}
            )
            for n in range(3):
                await api("PATCH", f"{keys}/{made['key']['id']}", token, {"name": f"k{i}-{n}"})
        await wait_for(lambda: len(receiver.at("/ok")) >= 20, within=20, what="20 deliveries")
        ids = Counter(d.msg_id for d in receiver.at("/ok"))
        assert len(ids) == 20 and set(ids.values()) == {1}
    finally:
        assert node.stop() == 0, node.stderr()


async def test_events_committed_while_no_server_runs_are_delivered_at_start(
    tmp_path: Path, upstream: Recorder, receiver: Receiver
) -> None:
    """The CLI writes the outbox; a server started later delivers."""
    env = node_env(f"sqlite:///{tmp_path}/kg.db", **HOOKS)
    assert run_keygate("init", env=env, cwd=tmp_path).returncode == 0
    made = run_keygate(
        "keys", "create", "--group", "default", "--webhook-url", receiver.url("/ok"), "--json",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = json.loads(made.stdout)["webhook_secret"]
    assert receiver.got == []
    node = await serve_node(tmp_path, env, upstream.url)
    try:
        await wait_for(lambda: receiver.at("/ok"), within=10, what="the delivery")
        assert receiver.at("/ok")[0].verify(secret)["type"] == "key.created"
    finally:
        assert node.stop() == 0, node.stderr()
