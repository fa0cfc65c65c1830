"""Limits in the configuration (OWASP API4, API8): safe by default, never switched off by typo."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from keygate.config.loader import ConfigError, load_settings
from keygate.config.settings import (
    AuthSettings,
    RateLimitSettings,
    Route,
    ServerSettings,
    StoreSettings,
    WebhookSettings,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "keygate.example.toml"

SERVER_LIMITS = [
    "header_timeout",
    "body_idle_timeout",
    "shutdown_timeout",
    "max_header_count",
    "max_header_bytes",
    "max_line_bytes",
]
ROUTE = '[[routes]]\nname = "r"\nprefix = "/r"\nupstream = "http://127.0.0.1:9"\n'


def test_config_limits_defaults_are_bounded() -> None:
    server = ServerSettings()
    assert 0 < server.header_timeout <= 30
    assert 0 < server.body_idle_timeout <= 60
    assert 0 < server.max_header_count <= 200
    assert 0 < server.max_header_bytes <= 64 * 1024
    assert 0 < server.max_line_bytes <= 64 * 1024
    assert server.trusted_proxies == ()  # X-Forwarded-For believed from no one
    route = Route(name="r", prefix="/r", upstream="http://127.0.0.1:9")
    assert 0 < route.timeout <= 120 and 0 < route.max_connections <= 10_000


def test_config_limits_example_file_documents_the_defaults() -> None:
    settings = load_settings(EXAMPLE, {})
    assert settings.server == ServerSettings()
    assert settings.store == StoreSettings()
    assert settings.auth == AuthSettings()
    assert settings.ratelimit == RateLimitSettings()
    assert settings.webhooks == WebhookSettings()
    (route,) = settings.routes
    defaults = Route(name=route.name, prefix=route.prefix, upstream=route.upstream)
    assert route == dataclasses.replace(defaults, strip_prefix=route.strip_prefix)


@pytest.mark.parametrize("name", SERVER_LIMITS)
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "-inf", '"10"', "true"])
def test_config_limits_server_limit_cannot_be_switched_off(
    tmp_path: Path, name: str, value: str
) -> None:
    if value in ("nan", "inf", "-inf") and name.startswith("max_"):
        value = value.replace("nan", "0.5").replace("inf", "1.5")  # floats for int limits
    path = tmp_path / "k.toml"
    path.write_text(f"[server]\n{name} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert f"server.{name}" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["header_timeout", "body_idle_timeout", "shutdown_timeout"])
@pytest.mark.parametrize("value", ["nan", "inf", "0", "-3", "soon"])
def test_config_limits_env_override_cannot_switch_a_timeout_off(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {f"KEYGATE_SERVER_{name.upper()}": value})
    assert f"server.{name}" in str(info.value)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("timeout = 0", "timeout"),
        ("timeout = nan", "timeout"),
        ("timeout = inf", "timeout"),
        ("max_body_bytes = -1", "max_body_bytes"),
        ("max_body_bytes = 1.5", "max_body_bytes"),
        ("max_connections = 0", "max_connections"),
        ('max_connections = "many"', "max_connections"),
    ],
)
def test_config_limits_route_limit_is_validated(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "k.toml"
    path.write_text(ROUTE + line + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert f"routes.r.{field}" in str(info.value) or f"routes[0].{field}" in str(info.value)


@pytest.mark.parametrize(
    "value", ['["10.0.0.0/33"]', '["not-a-net"]', '"10.0.0.0/8"', "[1]"]
)
def test_config_limits_trusted_proxies_must_be_cidrs(tmp_path: Path, value: str) -> None:
    path = tmp_path / "k.toml"
    path.write_text(f"[server]\ntrusted_proxies = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert "server.trusted_proxies" in str(info.value)


def test_config_limits_never_echo_a_store_password(tmp_path: Path) -> None:
    path = tmp_path / "k.toml"
    path.write_text('[store]\nurl = "mysql://u:hunter2secret@h/db"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert "hunter2secret" not in str(info.value)
