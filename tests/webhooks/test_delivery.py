"""Webhook deliveries end to end: a real keygate, a real receiver on 127.0.0.1,
every delivery verified with the standardwebhooks package (docs/webhooks.md)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import pytest

from tests.support.admin import AdminApi, ApiReply
from tests.support.gateway import Keygate
from tests.support.polling import wait_for
from tests.support.secrets import CAPTURED_LOGGERS, leaks
from tests.webhooks.conftest import HookFactory
from tests.webhooks.receiver import Receiver


async def deliveries(api: AdminApi, key_id: str) -> list[dict[str, Any]]:
    reply = await api.get(f"/keys/{key_id}/webhook-deliveries", api.admin)
    assert reply.status == 200, reply.raw
    return list(reply.json["items"])


async def hooked_key(api: AdminApi, receiver: Receiver, path: str) -> ApiReply:
    """A key in ``default`` made by the admin, its webhook_url the receiver's ``path``."""
    return await api.post(
        "/keys", api.admin, {"groups": ["default"], "webhook_url": receiver.url(path)}
    )


async def settled(api: AdminApi, key_id: str, count: int) -> list[dict[str, Any]]:
    """The key's deliveries once ``count`` exist and none is pending; oldest first."""

    async def done() -> list[dict[str, Any]] | None:
        items = await deliveries(api, key_id)
        ok = len(items) >= count and all(d["status"] != "pending" for d in items)
        return items if ok else None

    await wait_for(done, within=10, what=f"{count} settled deliveries")
    return list(reversed(await deliveries(api, key_id)))


async def test_webhooks_each_key_event_is_signed_and_verifies(
    kg: Keygate, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    for name in CAPTURED_LOGGERS:  # the loggers the hardening suite watches
        caplog.set_level(logging.DEBUG, logger=name)
    api = AdminApi(kg)
    made = await hooked_key(api, receiver, "/ok")
    assert made.status == 201, made.raw
    key, token, secret = made.json["key"], made.json["token"], made.json["webhook_secret"]
    assert secret.startswith("whsec_")
    kid = key["id"]
    assert (await api.patch(f"/keys/{kid}", api.admin, {"name": "renamed"})).status == 200
    assert (await api.patch(f"/keys/{kid}", api.admin, {"status": "disabled"})).status == 200
    assert (await api.patch(f"/keys/{kid}", api.admin, {"status": "active"})).status == 200
    rolled = await api.post(f"/keys/{kid}/roll", api.admin, {})
    assert rolled.status == 200
    assert (await api.post(f"/keys/{kid}/webhook-test", api.admin)).status == 202
    assert (await api.post(f"/keys/{kid}/revoke", api.admin)).status == 200
    await settled(api, kid, 7)
    assert (await api.delete(f"/keys/{kid}", api.admin)).status == 204
    await wait_for(lambda: len(receiver.at("/ok")) == 8, within=10, what="8 deliveries")

    types = [d.json["type"] for d in receiver.at("/ok")]
    assert types == [
        "key.created", "key.updated", "key.disabled", "key.enabled",
        "key.rolled", "key.test", "key.revoked", "key.deleted",
    ]  # fmt: skip
    for d in receiver.at("/ok"):
        payload = d.verify(secret)  # raises unless the signature holds
        assert set(payload) == {"type", "timestamp", "data"}
        assert set(payload["data"]) == {"key", "actor"}
        assert payload["data"]["key"]["id"] == kid
        datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
        assert d.msg_id.startswith("msg_")
        assert d.headers["content-type"] == "application/json"
        for secret_text in (token, rolled.json["token"], secret):
            assert secret_text.encode() not in d.body
    actor = receiver.at("/ok")[1].json["data"]["actor"]
    assert actor == {"user": "admin", "key_id": kg.admin_token.split("_")[1]}
    lines = [f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records]
    assert lines  # the capture works: keygate logged (access lines at least)
    assert leaks(lines) == []
    for line in lines:
        for secret_text in (token, rolled.json["token"], secret, receiver.url("/ok")):
            assert secret_text not in line


async def test_webhooks_retry_until_success_keeps_the_webhook_id(
    kg: Keygate, receiver: Receiver
) -> None:
    api = AdminApi(kg)
    made = await hooked_key(api, receiver, "/fail/2")
    kid = made.json["key"]["id"]
    [d] = await settled(api, kid, 1)
    assert (d["status"], d["attempts"], d["last_status_code"]) == ("delivered", 3, 200)
    got = receiver.at("/fail/2")
    assert len({g.msg_id for g in got}) == 1 and len(got) == 3
    for g in got:
        g.verify(made.json["webhook_secret"])
    # A later event is delivered after it, and the first is never sent again.
    assert (await api.post(f"/keys/{kid}/webhook-test", api.admin)).status == 202
    await settled(api, kid, 2)
    assert sum(1 for g in receiver.at("/fail/2") if g.msg_id == got[0].msg_id) == 3


async def test_webhooks_exhausted_schedule_is_abandoned(kg: Keygate, receiver: Receiver) -> None:
    api = AdminApi(kg)
    made = await hooked_key(api, receiver, "/fail/99")
    [d] = await settled(api, made.json["key"]["id"], 1)
    # At once, then one attempt per delay of the schedule (three).
    assert (d["status"], d["attempts"], d["last_status_code"]) == ("abandoned", 4, 500)
    assert d["next_attempt_at"] is None


async def test_webhooks_redirect_is_a_failure_not_followed(
    kg: Keygate, receiver: Receiver
) -> None:
    api = AdminApi(kg)
    made = await hooked_key(api, receiver, "/redirect")
    [d] = await settled(api, made.json["key"]["id"], 1)
    assert (d["status"], d["last_status_code"]) == ("abandoned", 302)
    assert "redirect" in d["last_error"]
    assert receiver.at("/ok") == []


async def test_webhooks_410_stops_deliveries_to_that_url_and_is_audited(
    kg: Keygate, receiver: Receiver
) -> None:
    api = AdminApi(kg)
    made = await hooked_key(api, receiver, "/gone")
    kid = made.json["key"]["id"]
    [d] = await settled(api, kid, 1)
    assert (d["status"], d["attempts"], d["last_status_code"]) == ("failed", 1, 410)
    trail = await api.get("/audit", api.admin, params={"target": kid})
    assert "webhook.gone" in [r["action"] for r in trail.json["items"]]
    assert (await api.patch(f"/keys/{kid}", api.admin, {"name": "after-gone"})).status == 200
    # The later event is fanned out (the key's change feed moves) but no
    # delivery to the gone URL is made.
    other = await hooked_key(api, receiver, "/ok")
    await settled(api, other.json["key"]["id"], 1)
    assert len(await deliveries(api, kid)) == 1
    assert len(receiver.at("/gone")) == 1


async def test_webhooks_retry_after_is_honoured(kg: Keygate, receiver: Receiver) -> None:
    api = AdminApi(kg)
    made = await hooked_key(api, receiver, "/busy")
    kid = made.json["key"]["id"]

    async def waiting() -> dict[str, Any] | None:
        items = await deliveries(api, kid)
        return items[0] if items and items[0]["last_status_code"] == 429 else None

    await wait_for(waiting, within=5, what="the 429")
    d = await waiting()
    assert d is not None and d["status"] == "pending"
    gap = datetime.fromisoformat(d["next_attempt_at"][:-1]) - datetime.fromisoformat(
        d["last_attempt_at"][:-1]
    )
    assert gap.total_seconds() >= 1  # Retry-After: 2, to the second; the schedule says 0.1
    [done] = await settled(api, kid, 1)
    assert (done["status"], done["attempts"]) == ("delivered", 2)


async def test_webhooks_hanging_receiver_times_out(
    hooks_factory: HookFactory, receiver: Receiver
) -> None:
    kg = await hooks_factory(timeout=0.3, retry_schedule=(0.1,))
    api = AdminApi(kg)
    made = await hooked_key(api, receiver, "/hang")
    [d] = await settled(api, made.json["key"]["id"], 1)
    assert d["status"] == "abandoned" and d["attempts"] == 2
    assert d["last_error"] == "no answer within 0.3 s"


async def test_webhooks_keep_at_most_1_kib_of_an_answer(kg: Keygate, receiver: Receiver) -> None:
    api = AdminApi(kg)
    made = await hooked_key(api, receiver, "/big")
    reply = await api.get(f"/keys/{made.json['key']['id']}/webhook-deliveries", api.admin)
    await settled(api, made.json["key"]["id"], 1)
    reply = await api.get(f"/keys/{made.json['key']['id']}/webhook-deliveries", api.admin)
    assert reply.json["items"][0]["last_response"] == "x" * 1024
    assert b"x" * 1025 not in reply.raw


async def test_webhooks_rotation_signs_with_both_secrets_for_the_overlap(
    kg: Keygate, receiver: Receiver
) -> None:
    api = AdminApi(kg)
    made = await hooked_key(api, receiver, "/ok")
    kid, old = made.json["key"]["id"], made.json["webhook_secret"]
    await settled(api, kid, 1)
    rotated = await api.post(f"/keys/{kid}/webhook-secret", api.admin)
    assert rotated.status == 200
    new = rotated.json["webhook_secret"]
    assert new != old and new.startswith("whsec_")
    assert (await api.post(f"/keys/{kid}/webhook-test", api.admin)).status == 202
    await settled(api, kid, 2)
    first, test = receiver.at("/ok")
    assert len(first.headers["webhook-signature"].split(" ")) == 1
    assert len(test.headers["webhook-signature"].split(" ")) == 2
    test.verify(old)
    test.verify(new)
    # The secret is shown once: a later change of webhook_url does not repeat it.
    again = await api.patch(f"/keys/{kid}", api.admin, {"webhook_url": receiver.url("/ok?x=1")})
    assert "webhook_secret" not in again.json


async def test_webhooks_secret_given_when_url_first_set_by_patch(
    kg: Keygate, receiver: Receiver
) -> None:
    api = AdminApi(kg)
    made = await api.post("/keys", api.admin, {"groups": ["default"]})
    assert "webhook_secret" not in made.json
    kid = made.json["key"]["id"]
    patched = await api.patch(f"/keys/{kid}", api.admin, {"webhook_url": receiver.url("/ok")})
    secret = patched.json["webhook_secret"]
    assert (await api.post(f"/keys/{kid}/webhook-test", api.admin)).status == 202
    await wait_for(lambda: len(receiver.at("/ok")) == 2, within=5, what="the test ping")
    assert [d.verify(secret)["type"] for d in receiver.at("/ok")] == ["key.updated", "key.test"]


async def test_webhooks_global_endpoint_filters_events(
    hooks_factory: HookFactory, receiver: Receiver
) -> None:
    from keygate.config.settings import WebhookEndpoint
    from keygate.gateway.webhooks.signing import new_secret

    ops, revokes = new_secret(), new_secret()
    kg = await hooks_factory(
        endpoints=(
            WebhookEndpoint(url=receiver.url("/ops"), secret=ops, events=("key.*",)),
            WebhookEndpoint(url=receiver.url("/rev"), secret=revokes, events=("key.revoked",)),
        )
    )
    api = AdminApi(kg)
    made = await api.post("/keys", api.admin, {"groups": ["default"]})
    kid = made.json["key"]["id"]
    assert (await api.post(f"/keys/{kid}/revoke", api.admin)).status == 200
    await settled(api, kid, 3)
    # The admin's own key (made at start) was announced too.
    ours = [d.verify(ops) for d in receiver.at("/ops")]
    ours = [p["type"] for p in ours if p["data"]["key"]["id"] == kid]
    assert ours == ["key.created", "key.revoked"]
    assert [d.verify(revokes)["type"] for d in receiver.at("/rev")] == ["key.revoked"]


async def test_webhooks_owner_sees_only_the_keys_own_deliveries(
    hooks_factory: HookFactory, receiver: Receiver
) -> None:
    from keygate.config.settings import WebhookEndpoint
    from keygate.gateway.webhooks.signing import new_secret
    from tests.support.admin import make_member

    kg = await hooks_factory(
        endpoints=(WebhookEndpoint(url=receiver.url("/ops"), secret=new_secret()),)
    )
    api = AdminApi(kg)
    member = await make_member(api, "ann")
    made = await api.post(
        "/keys", member.token, {"groups": [], "webhook_url": receiver.url("/ok")}
    )
    assert made.status == 201, made.raw
    kid = made.json["key"]["id"]
    await settled(api, kid, 2)
    mine = await api.get(f"/keys/{kid}/webhook-deliveries", member.token)
    assert [d["target"] for d in mine.json["items"]] == ["key"]
    redo = await api.post(
        f"/keys/{kid}/webhook-deliveries/{mine.json['items'][0]['id']}/redeliver", member.token
    )
    assert redo.status == 202 and redo.json["status"] == "pending"
    await wait_for(lambda: len(receiver.at("/ok")) == 2, within=5, what="the redelivery")
    first, second = receiver.at("/ok")
    assert first.msg_id == second.msg_id
    other = await api.get(f"/keys/{kg.admin_token.split('_')[1]}/webhook-deliveries", member.token)
    assert other.status == 404


async def test_webhooks_attempts_and_backlog_are_in_the_metrics(
    kg: Keygate, receiver: Receiver
) -> None:
    from tests.gateway.test_metrics import samples_of, value

    api = AdminApi(kg)
    made = await hooked_key(api, receiver, "/fail/2")
    await settled(api, made.json["key"]["id"], 1)
    total = "keygate_webhook_deliveries_total"
    found = await samples_of(kg)
    # Two failed attempts, then the delivery: counted by event and result.
    assert value(found, total, event="key.created", result="failed") == 2
    assert value(found, total, event="key.created", result="delivered") == 1
    assert ("keygate_webhook_queue_depth", ()) in found

    # A receiver that asks for 2 s (429, Retry-After) keeps its delivery
    # waiting that long: the queue depth counts it.
    await hooked_key(api, receiver, "/busy")

    async def waiting() -> bool:
        return value(await samples_of(kg), "keygate_webhook_queue_depth") >= 1

    await wait_for(waiting, within=10, what="a waiting delivery in the queue depth")
