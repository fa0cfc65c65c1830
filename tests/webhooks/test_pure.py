"""The pure parts of webhooks: settings, SSRF rules, signatures, schedule, filters."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from keygate.config.loader import ConfigError, load_settings
from keygate.gateway.webhooks import events, schedule, signing, ssrf

SECRET = signing.new_secret()


def test_config_webhook_endpoints_load(tmp_path: Path) -> None:
    path = tmp_path / "k.toml"
    path.write_text(
        "[webhooks]\nallow_http = true\nretry_schedule = [1, 2]\n"
        f'[[webhooks.endpoints]]\nurl = "https://ops.example/kg"\nsecret = "{SECRET}"\n'
        'events = ["key.revoked", "key.*"]\n'
    )
    hooks = load_settings(path, {}).webhooks
    assert hooks.allow_http and hooks.retry_schedule == (1.0, 2.0)
    (endpoint,) = hooks.endpoints
    assert (endpoint.url, endpoint.secret, endpoint.events) == (
        "https://ops.example/kg", SECRET, ("key.revoked", "key.*"),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("table", "where"),
    [
        ('url = "https://o.example"\nsecret = "whsec_notbase64!!"', "secret"),
        (f'url = "https://o.example"\nsecret = "{SECRET[6:]}"', "secret"),
        (f'url = "ftp://o.example"\nsecret = "{SECRET}"', "url"),
        (f'url = "https://o.example"\nsecret = "{SECRET}"\nevents = ["user.*"]', "events"),
        (f'url = "https://o.example"\nsecret = "{SECRET}"\nbogus = 1', "bogus"),
        ('url = "https://o.example"', "secret"),
    ],
)
def test_config_bad_endpoint_is_refused_without_echoing_the_secret(
    tmp_path: Path, table: str, where: str
) -> None:
    path = tmp_path / "k.toml"
    path.write_text(f"[[webhooks.endpoints]]\n{table}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert f"webhooks.endpoints[0].{where}" in str(info.value)
    assert SECRET[6:] not in str(info.value)


@pytest.mark.parametrize(
    ("hooks", "url", "reason"),
    [
        ("allow_http = true\nallow_private = true", "http://user:pw@127.0.0.1:9/h", "userinfo"),
        ("", "http://ops.example/h", "https"),
        ("", "https://127.0.0.1/h", "loopback"),
        ("allow_private = true", "https://169.254.169.254/h", "link-local"),
        ("", "https://2130706433/h", "non-standard form"),
        ("", "https://[64:ff9b::7f00:1]/h", "loopback"),
    ],
)
def test_config_endpoint_that_could_never_be_sent_to_is_refused(
    tmp_path: Path, hooks: str, url: str, reason: str
) -> None:
    # The same rules as a key's webhook_url, at start rather than per event.
    path = tmp_path / "k.toml"
    path.write_text(
        f'[webhooks]\n{hooks}\n[[webhooks.endpoints]]\nurl = "{url}"\nsecret = "{SECRET}"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert "webhooks.endpoints[0].url" in str(info.value)
    assert reason in str(info.value)
    assert "pw" not in str(info.value)


def test_config_retry_schedule_from_the_environment() -> None:
    hooks = load_settings(None, {"KEYGATE_WEBHOOKS_RETRY_SCHEDULE": "0.5, 2"}).webhooks
    assert hooks.retry_schedule == (0.5, 2.0)
    with pytest.raises(ConfigError, match=r"webhooks\.retry_schedule"):
        load_settings(None, {"KEYGATE_WEBHOOKS_RETRY_SCHEDULE": "-1"})


def test_signing_verifies_with_standardwebhooks_and_two_secrets() -> None:
    other = signing.new_secret()
    body = b'{"type":"key.test"}'
    headers = signing.headers([SECRET, other], "msg_1", int(time.time()), body)
    assert headers["webhook-signature"].count("v1,") == 2
    for secret in (SECRET, other):
        assert Webhook(secret).verify(body, headers) == {"type": "key.test"}


@pytest.mark.parametrize(
    ("address", "private_ok", "refused"),
    [
        ("8.8.8.8", False, None),
        ("127.0.0.1", False, "loopback"),
        ("127.0.0.1", True, None),
        ("10.0.0.1", True, None),
        ("169.254.169.254", True, "link-local"),
        ("fe80::1", True, "link-local"),
        ("::ffff:127.0.0.1", False, "loopback"),
        ("::ffff:169.254.169.254", True, "link-local"),
        ("2002:7f00:1::", False, "loopback"),  # 6to4 around 127.0.0.1
        # NAT64 (well-known and local-use), SIIT and IPv4-compatible forms
        # around loopback and the metadata address; Teredo around loopback.
        ("64:ff9b::7f00:1", False, "loopback"),
        ("64:ff9b::a9fe:a9fe", True, "link-local"),
        ("64:ff9b:1::7f00:1", False, "loopback"),
        ("::ffff:0:127.0.0.1", False, "loopback"),
        ("::127.0.0.1", False, "loopback"),
        ("2001:0:7f00:1::", False, "loopback"),  # Teredo, server 127.0.0.1
        ("64:ff9b::808:808", False, None),  # NAT64 to a global address
        ("100.64.0.1", False, "not global"),
        ("224.0.0.1", False, "not global"),
        ("2001:4860:4860::8888", False, None),
    ],
)
def test_ssrf_address_rules(address: str, private_ok: bool, refused: str | None) -> None:
    problem = ssrf.address_problem(ipaddress.ip_address(address), allow_private=private_ok)
    assert (problem is None) == (refused is None)
    if refused:
        assert problem is not None and refused in problem


def test_schedule_delays_retry_after_and_abandon() -> None:
    plan = (5.0, 300.0)
    assert schedule.next_delay(plan, 1, None) == 5.0
    assert schedule.next_delay(plan, 2, None) == 300.0
    assert schedule.next_delay(plan, 3, None) is None
    assert schedule.next_delay(plan, 1, 60.0) == 60.0
    assert schedule.next_delay(plan, 1, 10**9) == schedule.MAX_RETRY_AFTER
    assert schedule.retry_after("120", 0.0) == 120.0
    assert schedule.retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert schedule.retry_after("soon", 0.0) is None


@pytest.mark.parametrize(
    ("filters", "event", "taken"),
    [
        (("key.*",), "key.revoked", True),
        (("*",), "key.test", True),
        (("key.revoked",), "key.revoked", True),
        (("key.revoked",), "key.rolled", False),
        ((), "key.created", False),
    ],
)
def test_events_filters(filters: tuple[str, ...], event: str, taken: bool) -> None:
    assert events.matches(filters, event) is taken


def test_reload_holds_webhook_settings_for_a_restart() -> None:
    import dataclasses

    from keygate.config.reload import reloadable
    from keygate.config.settings import Settings, WebhookSettings

    running = Settings()
    new = dataclasses.replace(running, webhooks=WebhookSettings(allow_http=True, timeout=3))
    kept, held = reloadable(running, new)
    assert kept.webhooks == running.webhooks
    assert sorted(held) == ["webhooks.allow_http", "webhooks.timeout"]
