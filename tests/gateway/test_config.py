"""Settings: defaults, TOML, KEYGATE_* overrides, one-line errors, no secrets.

The contract is docs/reference.md#configuration.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from keygate.config.loader import ConfigError, load_settings
from keygate.config.settings import AuthSettings, Route, Settings

SECRET = "s3cr3t-Pa55w0rd"
SECRET_URL = f"postgresql://keygate:{SECRET}@db.example/keygate"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keygate.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ or {})
    message = str(info.value)
    assert "\n" not in message
    assert "Traceback" not in message
    return message


def test_config_no_file_gives_spec_defaults() -> None:
    settings = load_settings(None, {})
    assert settings.server.listen == "127.0.0.1:8080"
    assert settings.server.workers == 1
    assert settings.server.admin_prefix == "/_keygate"
    assert settings.store.url == "sqlite:///keygate-data/keygate.db"
    auth = settings.auth
    assert auth.key_prefix == "kg"
    assert auth.sources == ("authorization", "x-api-key")
    assert auth.cache_size == 100000
    assert auth.cache_ttl == 60
    assert auth.negative_cache_ttl == 5
    assert auth.last_used_flush_interval == 1.0
    assert auth.max_keys_per_user == 10
    assert settings.routes == ()


def test_config_route_defaults_match_spec(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[routes]]\nname = "billing"\nprefix = "/billing"\nupstream = "http://127.0.0.1:9001"\n',
    )
    (route,) = load_settings(path, {}).routes
    assert route == Route(name="billing", prefix="/billing", upstream="http://127.0.0.1:9001")
    assert route.strip_prefix is False
    assert route.public is False
    assert route.timeout == 30


def test_config_spec_example_file_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
listen = "0.0.0.0:9090"
workers = 4
admin_prefix = "/_admin"

[store]
url = "sqlite:////var/lib/keygate/keygate.db"

[auth]
key_prefix = "acme"
sources = ["authorization", "x-api-key", "basic", "query:api_key"]
cache_size = 500
cache_ttl = 30
negative_cache_ttl = 2
last_used_flush_interval = 0.5
max_keys_per_user = 3

[[routes]]
name = "billing"
prefix = "/billing/"
upstream = "http://127.0.0.1:9001/"
strip_prefix = true
public = false
timeout = 2.5

[[routes]]
name = "docs"
prefix = "/docs"
upstream = "https://docs.internal:8443/base"
public = true
""",
    )
    settings = load_settings(path, {})
    assert settings.server.listen == "0.0.0.0:9090"
    assert settings.server.workers == 4
    assert settings.server.admin_prefix == "/_admin"
    assert settings.store.url == "sqlite:////var/lib/keygate/keygate.db"
    assert settings.auth == AuthSettings(
        key_prefix="acme",
        sources=("authorization", "x-api-key", "basic", "query:api_key"),
        cache_size=500,
        cache_ttl=30.0,
        negative_cache_ttl=2.0,
        last_used_flush_interval=0.5,
        max_keys_per_user=3,
    )
    billing, docs = settings.routes
    assert billing.prefix == "/billing"
    assert billing.upstream == "http://127.0.0.1:9001"
    assert billing.strip_prefix is True
    assert billing.timeout == 2.5
    assert docs.public is True
    assert docs.upstream == "https://docs.internal:8443/base"
    assert settings.source == str(path)


def test_config_keygate_config_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nworkers = 3\n")
    settings = load_settings(None, {"KEYGATE_CONFIG": str(path)})
    assert settings.server.workers == 3


@pytest.mark.parametrize(
    ("env", "section", "name", "expected"),
    [
        ({"KEYGATE_SERVER_WORKERS": "8"}, "server", "workers", 8),
        ({"KEYGATE_SERVER_LISTEN": "127.0.0.1:9999"}, "server", "listen", "127.0.0.1:9999"),
        ({"KEYGATE_AUTH_CACHE_TTL": "2.5"}, "auth", "cache_ttl", 2.5),
        ({"KEYGATE_AUTH_CACHE_TTL": "7"}, "auth", "cache_ttl", 7.0),
        ({"KEYGATE_SERVER_ACCESS_LOG": "false"}, "server", "access_log", False),
        ({"KEYGATE_SERVER_ACCESS_LOG": "0"}, "server", "access_log", False),
        ({"KEYGATE_SERVER_ACCESS_LOG": "yes"}, "server", "access_log", True),
        (
            {"KEYGATE_AUTH_SOURCES": "authorization, basic,query:token"},
            "auth",
            "sources",
            ("authorization", "basic", "query:token"),
        ),
        (
            {"KEYGATE_STORE_URL": "sqlite:////tmp/other.db"},
            "store",
            "url",
            "sqlite:////tmp/other.db",
        ),
        ({"KEYGATE_AUTH_KEY_PREFIX": "acme"}, "auth", "key_prefix", "acme"),
        ({"KEYGATE_SERVER_BUSY_POLL_US": "50"}, "server", "busy_poll_us", 50),
    ],
)
def test_config_env_override_is_typed(
    tmp_path: Path, env: dict[str, str], section: str, name: str, expected: object
) -> None:
    path = write(tmp_path, "[server]\nworkers = 2\naccess_log = true\n[auth]\ncache_ttl = 60\n")
    settings = load_settings(path, env)
    value = getattr(getattr(settings, section), name)
    assert value == expected
    assert type(value) is type(expected)


def test_config_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nworkers = 2\n[store]\nurl = "sqlite:///a.db"\n')
    settings = load_settings(path, {"KEYGATE_SERVER_WORKERS": "5"})
    assert settings.server.workers == 5
    assert settings.store.url == "sqlite:///a.db"


def test_config_unrelated_env_is_ignored(tmp_path: Path) -> None:
    settings = load_settings(None, {"KEYGATE_LOG_LEVEL": "debug", "HOME": "/root"})
    assert settings == dataclasses.replace(Settings(), source="<defaults>")


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[server\nworkers = 1\n", ["TOML"]),
        ("[srv]\nworkers = 1\n", ["[srv]"]),
        ("[server]\nwokers = 1\n", ["server.wokers", "unknown setting"]),
        ('[server]\nworkers = "two"\n', ["server.workers", "integer"]),
        ("[server]\nworkers = true\n", ["server.workers"]),
        ("[server]\nworkers = 0\n", ["server.workers"]),
        ("[server]\nbusy_poll_us = -1\n", ["server.busy_poll_us", "0 (off) to 10000"]),
        ("[server]\nbusy_poll_us = 10001\n", ["server.busy_poll_us", "0 (off) to 10000"]),
        ("[server]\nbusy_poll_us = 0.5\n", ["server.busy_poll_us"]),
        ('[auth]\ncache_ttl = "soon"\n', ["auth.cache_ttl", "number"]),
        ('[auth]\nsources = "authorization"\n', ["auth.sources", "list"]),
        ('[auth]\nsources = ["cookie"]\n', ["auth.sources"]),
        ('[server]\nlisten = "localhost"\n', ["server.listen", "host:port"]),
        ('[server]\nlisten = "127.0.0.1:99999"\n', ["server.listen"]),
        ('[server]\nlisten = ":8080"\n', ["server.listen"]),
        ('[store]\nurl = "mysql://db/x"\n', ["store.url"]),
        (
            '[[routes]]\nname = "a"\nprefix = "/a"\nupstream = "ftp://127.0.0.1/"\n',
            ["routes.a.upstream"],
        ),
        ('[[routes]]\nname = "a"\nprefix = "/a"\nupstream = "not a url"\n', ["routes.a.upstream"]),
        ('[[routes]]\nname = "a"\nprefix = "/a"\n', ["routes[0].upstream", "missing"]),
        (
            '[[routes]]\nname = "a"\nprefix = "/a"\nupstream = "http://h"\ntimeout = 0\n',
            ["routes.a.timeout"],
        ),
        ('[[routes]]\nname = "a"\nprefix = "a"\nupstream = "http://h"\n', ["routes.a.prefix"]),
        (
            '[[routes]]\nname = "a"\nprefix = "/x"\nupstream = "http://h"\n'
            '[[routes]]\nname = "b"\nprefix = "/x/"\nupstream = "http://h"\n',
            ["prefix", "'/x'"],
        ),
        (
            '[[routes]]\nname = "a"\nprefix = "/x"\nupstream = "http://h"\n'
            '[[routes]]\nname = "a"\nprefix = "/y"\nupstream = "http://h"\n',
            ["name", "'a'"],
        ),
        (
            '[[routes]]\nname = "adm"\nprefix = "/_keygate/api"\nupstream = "http://h"\n',
            ["routes.adm.prefix", "admin_prefix"],
        ),
        (
            '[[routes]]\nname = "adm"\nprefix = "/_keygate"\nupstream = "http://h"\n',
            ["routes.adm.prefix"],
        ),
    ],
)
def test_config_bad_file_is_one_line_naming_file_and_setting(
    tmp_path: Path, text: str, names: list[str]
) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert str(path) in message
    for name in names:
        assert name in message


def test_config_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    message = config_error(path)
    assert str(path) in message
    assert "not found" in message


def test_config_bad_env_value_names_the_variable() -> None:
    message = config_error(None, {"KEYGATE_SERVER_WORKERS": "many"})
    assert "KEYGATE_SERVER_WORKERS" in message
    assert "server.workers" in message


@pytest.mark.parametrize(
    ("environ", "overrides", "where"),
    [
        ({"KEYGATE_SERVER_WORKERS": "0"}, {}, "environment KEYGATE_SERVER_WORKERS"),
        ({}, {"server": {"workers": 0}}, "command line"),
    ],
)
def test_config_value_out_of_bounds_names_where_it_came_from(
    tmp_path: Path, environ: dict[str, str], overrides: dict[str, dict[str, object]], where: str
) -> None:
    path = write(tmp_path, "[server]\nworkers = 2\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ, overrides=overrides)
    assert str(info.value) == f"{where}: server.workers: must be at least 1"


def test_config_file_value_overridden_by_environment_is_not_judged(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nworkers = 0\n")
    assert load_settings(path, {"KEYGATE_SERVER_WORKERS": "3"}).server.workers == 3


@pytest.mark.parametrize(
    "environ",
    [
        {"KEYGATE_STORE_POOL_SIZE": SECRET_URL},
        {"KEYGATE_STORE_CHANGE_POLL_INTERVAL": SECRET_URL},
        {"KEYGATE_SERVER_ACCESS_LOG": SECRET_URL},
        {"KEYGATE_STORE_URL": f"mysql://keygate:{SECRET}@db.example/keygate"},
    ],
)
def test_config_bad_env_value_never_echoes_secret(environ: dict[str, str]) -> None:
    message = config_error(None, environ)
    assert SECRET not in message
    assert "keygate:" not in message.replace("KEYGATE", "")


@pytest.mark.parametrize(
    "text",
    [
        f'[store]\npool_size = "{SECRET_URL}"\n',
        f'[store]\nurl = "mysql://keygate:{SECRET}@db.example/keygate"\n',
        f'[store]\nurl = "{SECRET_URL}"\nbogus = "{SECRET}"\n',
        f'[store]\nurl = ["{SECRET_URL}"]\n',
        f'[store]\nurl = "{SECRET_URL}\n',
    ],
)
def test_config_bad_file_never_echoes_secret(tmp_path: Path, text: str) -> None:
    message = config_error(write(tmp_path, text))
    assert SECRET not in message


# --- [ratelimit] (docs/reference.md#ratelimit) ------------------------------------
def test_config_ratelimit_section_from_file_and_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[ratelimit]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:6380/2"\n'
        'headers = "both"\n',
    )
    settings = load_settings(path, {"KEYGATE_RATELIMIT_FAIL_OPEN": "off"})
    assert settings.ratelimit.backend == "redis"
    assert settings.ratelimit.redis_url == "redis://127.0.0.1:6380/2"
    assert settings.ratelimit.headers == "both"
    assert settings.ratelimit.fail_open is False


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('backend = "memcached"', "ratelimit.backend: must be one of local, redis"),
        ('headers = "all"', "ratelimit.headers: must be one of both, draft, legacy, none"),
        (
            f'redis_url = "http://:{SECRET}@cache.example"',
            "ratelimit.redis_url: must start with redis://, rediss:// or unix://",
        ),
        ("redis_timeout = 0", "ratelimit.redis_timeout: must be from 0 to 10 seconds"),
        ('redis_prefix = "a b"', "ratelimit.redis_prefix: must be 1-64 letters"),
        ("fail_closed = true", "ratelimit.fail_closed: unknown setting"),
    ],
)
def test_config_ratelimit_refused_in_one_line_without_the_value(
    tmp_path: Path, line: str, problem: str
) -> None:
    path = write(tmp_path, f"[ratelimit]\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    message = str(info.value)
    assert problem in message and "\n" not in message and SECRET not in message
