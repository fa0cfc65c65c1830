"""Where a key's deliveries go once its URL changes: a 410 marker per URL that
setting the URL clears, no more sends to a URL the key dropped, redelivery to
the key's current URL; and the webhook endpoints' refusals (docs/webhooks.md)."""

from __future__ import annotations

from typing import Any

from keygate.config.settings import WebhookEndpoint
from keygate.gateway.webhooks.signing import new_secret
from tests.support.admin import AdminApi
from tests.support.gateway import Keygate
from tests.support.polling import wait_for
from tests.webhooks.conftest import HookFactory
from tests.webhooks.receiver import Receiver
from tests.webhooks.test_delivery import deliveries, settled


def keys_only(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in items if d["target"] == "key"]


async def new_key(api: AdminApi, url: str | None) -> dict[str, Any]:
    made = await api.post("/keys", api.admin, {"groups": ["default"], "webhook_url": url})
    assert made.status == 201, made.raw
    return dict(made.json)


async def test_webhooks_410_is_per_url_and_setting_the_url_clears_it(
    kg: Keygate, receiver: Receiver
) -> None:
    api = AdminApi(kg)
    gone = receiver.url("/gone")
    first = (await new_key(api, gone))["key"]["id"]
    [d] = await settled(api, first, 1)
    assert (d["status"], d["last_status_code"]) == ("failed", 410)
    # The marker stops the URL for every key: a test ping is refused, not queued.
    refused = await api.post(f"/keys/{first}/webhook-test", api.admin)
    assert (refused.status, refused.code) == (409, "webhook_gone"), refused.raw
    assert "410 Gone" in refused.json["error"]["message"]
    assert len(await deliveries(api, first)) == 1
    # Creating a key with that URL sets it: its key.created is sent.
    second = (await new_key(api, gone))["key"]["id"]
    [d2] = await settled(api, second, 1)
    assert (d2["event"], d2["status"], d2["last_status_code"]) == ("key.created", "failed", 410)
    assert len(receiver.at("/gone")) == 2
    # So is setting the same URL again on a change.
    again = await api.patch(f"/keys/{first}", api.admin, {"webhook_url": gone})
    assert again.status == 200, again.raw
    await settled(api, first, 2)
    assert len(receiver.at("/gone")) == 3
    for kid, count in ((first, 2), (second, 1)):
        trail = await api.get("/audit", api.admin, params={"target": kid})
        assert trail.status == 200, trail.raw
        assert [r["action"] for r in trail.json["items"]].count("webhook.gone") == count


async def test_webhooks_a_dropped_url_gets_no_more_attempts_and_redeliver_follows_the_key(
    hooks_factory: HookFactory, receiver: Receiver
) -> None:
    # The first attempt fails at once; the second is due 2 s later, after the
    # change. The operator's endpoint answers that second attempt.
    ops = receiver.url("/fail/1?ops")
    kg = await hooks_factory(
        retry_schedule=(2.0,), endpoints=(WebhookEndpoint(url=ops, secret=new_secret()),)
    )
    api = AdminApi(kg)
    changed = (await new_key(api, receiver.url("/fail/99?changed")))["key"]["id"]
    cleared = (await new_key(api, receiver.url("/fail/99?cleared")))["key"]["id"]

    async def one_attempt() -> bool:
        for kid in (changed, cleared):
            items = await deliveries(api, kid)
            if len(items) < 2 or any(d["attempts"] < 1 for d in items):
                return False
        return True

    await wait_for(one_attempt, within=10, what="the first attempts")
    new_url = receiver.url("/ok")
    patched = await api.patch(f"/keys/{changed}", api.admin, {"webhook_url": new_url})
    assert patched.status == 200, patched.raw
    assert (await api.patch(f"/keys/{cleared}", api.admin, {"webhook_url": None})).status == 200

    old, updated = keys_only(await settled(api, changed, 4))
    assert (old["status"], old["attempts"], old["last_error"]) == (
        "abandoned", 1, "webhook_url changed",
    )  # fmt: skip
    assert (updated["event"], updated["status"], updated["url"]) == (
        "key.updated", "delivered", new_url,
    )  # fmt: skip
    [gone] = keys_only(await settled(api, cleared, 3))
    assert (gone["status"], gone["attempts"], gone["last_error"]) == (
        "abandoned", 1, "webhook_url changed",
    )  # fmt: skip
    assert len(receiver.at("/fail/99")) == 2  # one attempt each, none after the change
    # The endpoint's deliveries are the operator's: sent on, whatever the key's URL.
    for kid in (changed, cleared):
        sent = [d for d in await deliveries(api, kid) if d["target"] == "endpoint"]
        assert sent and all((d["status"], d["attempts"]) == ("delivered", 2) for d in sent)

    # Redelivery goes to the key's URL as it is now, with the same webhook-id.
    again = await api.post(
        f"/keys/{changed}/webhook-deliveries/{old['id']}/redeliver", api.admin
    )
    assert again.status == 202, again.raw
    assert again.json["url"] == new_url
    await settled(api, changed, 5)
    assert [g.msg_id for g in receiver.at("/ok")][-1] == old["event_id"]
    assert len(receiver.at("/fail/99")) == 2
    # A key without a URL has nowhere to redeliver to.
    none = await api.post(
        f"/keys/{cleared}/webhook-deliveries/{gone['id']}/redeliver", api.admin
    )
    assert (none.status, none.code) == (409, "no_webhook_url"), none.raw


async def test_webhooks_test_and_secret_refuse_a_revoked_key(
    kg: Keygate, receiver: Receiver
) -> None:
    api = AdminApi(kg)
    kid = (await new_key(api, receiver.url("/ok")))["key"]["id"]
    assert (await api.post(f"/keys/{kid}/revoke", api.admin)).status == 200
    for path in ("webhook-test", "webhook-secret"):
        reply = await api.post(f"/keys/{kid}/{path}", api.admin)
        assert (reply.status, reply.code) == (409, "key_revoked"), (path, reply.raw)
    await wait_for(lambda: len(receiver.at("/ok")) == 2, within=10, what="created, revoked")
    assert [d.json["type"] for d in receiver.at("/ok")] == ["key.created", "key.revoked"]


async def test_webhooks_test_and_secret_take_no_fields(kg: Keygate, receiver: Receiver) -> None:
    api = AdminApi(kg)
    kid = (await new_key(api, receiver.url("/ok")))["key"]["id"]
    for path in ("webhook-test", "webhook-secret"):
        url = f"/keys/{kid}/{path}"
        extra = await api.post(url, api.admin, {"x": 1})
        assert (extra.status, extra.code) == (422, "invalid"), (path, extra.raw)
        assert extra.details == {"x": "unknown field"}
        for raw in (b"not json", b"null", b"[]"):
            bad = await api.post(
                url, api.admin, data=raw, headers={"Content-Type": "application/json"}
            )
            assert (bad.status, bad.code) == (400, "bad_request"), (path, raw, bad.raw)
        plain = await api.post(url, api.admin, data=b"x", headers={"Content-Type": "text/plain"})
        assert plain.status == 400, (path, plain.raw)
        assert (await api.post(url, api.admin, {})).status in (200, 202)
        assert (await api.post(url, api.admin)).status in (200, 202)
    # Only the two accepted test pings were sent (with key.created).
    await wait_for(lambda: len(receiver.at("/ok")) == 3, within=10, what="3 deliveries")
    assert [d.json["type"] for d in receiver.at("/ok")].count("key.test") == 2
