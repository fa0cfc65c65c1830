"""``keygate keys webhook …`` and the webhook secret on create/update, through ``main(argv)``;
a gateway on the same store then delivers what the CLI queued."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from keygate.gateway.cli import main
from tests.support.admin import AdminApi
from tests.support.polling import wait_for
from tests.webhooks.conftest import HookFactory
from tests.webhooks.receiver import Receiver


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return orjson.loads(out)


async def test_cli_webhook_commands(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    hooks_factory: HookFactory,
    receiver: Receiver,
) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    kg = await hooks_factory(url=url)
    monkeypatch.setenv("KEYGATE_STORE_URL", url)
    monkeypatch.setenv("KEYGATE_WEBHOOKS_ALLOW_HTTP", "true")
    monkeypatch.setenv("KEYGATE_WEBHOOKS_ALLOW_PRIVATE", "true")
    made = await AdminApi(kg).post("/keys", kg.admin_token, {"groups": ["default"]})
    kid = made.json["key"]["id"]
    # main() runs a loop of its own: in a thread, beside the gateway's.
    updated = await asyncio.to_thread(
        cli, capsys, "keys", "update", kid, "--webhook-url", receiver.url("/ok")
    )
    secret = updated["webhook_secret"]
    test = await asyncio.to_thread(cli, capsys, "keys", "webhook", "test", kid)
    assert test["event_id"].startswith("msg_")
    await wait_for(lambda: len(receiver.at("/ok")) == 2, within=10, what="two deliveries")
    assert receiver.at("/ok")[1].verify(secret)["type"] == "key.test"
    listed = await asyncio.to_thread(cli, capsys, "keys", "webhook", "deliveries", kid)
    assert [d["event"] for d in listed["items"]] == ["key.test", "key.updated"]
    again = await asyncio.to_thread(
        cli, capsys, "keys", "webhook", "redeliver", kid, listed["items"][0]["id"]
    )
    assert again["event_id"] == test["event_id"]
    await wait_for(lambda: len(receiver.at("/ok")) == 3, within=10, what="the redelivery")
    rotated = await asyncio.to_thread(cli, capsys, "keys", "webhook", "rotate-secret", kid)
    assert rotated["webhook_secret"] != secret
    code = await asyncio.to_thread(main, ["keys", "webhook", "test", "000000000000"])
    assert code == 1
    assert "not_found" in capsys.readouterr().err
    # People see the secret in text output, once.
    code = await asyncio.to_thread(main, ["keys", "webhook", "rotate-secret", kid])
    out = capsys.readouterr().out
    assert code == 0 and "whsec_" in out and "shown once" in out
