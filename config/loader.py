"""Load :class:`Settings` from a TOML file and ``KEYGATE_*`` environment overrides.

Every problem raises :class:`ConfigError` whose message is one line naming the
file, the setting and what is wrong. Values of settings are never echoed, so a
database password in ``store.url`` cannot leak into a terminal or a log.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any

from keygate.config.settings import AuthSettings, Route, ServerSettings, Settings, StoreSettings
from yarl import URL

ENV_PREFIX = "KEYGATE_"
SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "store": StoreSettings,
    "auth": AuthSettings,
}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9]{1,16}$")
METHOD_OVERRIDE_MODES = ("check", "ignore")
SOURCE_RE = re.compile(r"^(authorization|x-api-key|basic|query:[A-Za-z0-9_.-]{1,64})$")


class ConfigError(Exception):
    """A configuration problem, worded as one line for the operator."""


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build settings from ``path`` (or ``KEYGATE_CONFIG``), then env, then ``overrides``.

    ``overrides`` carries command-line flags (``{"server": {"listen": ...}}``).
    """
    env = os.environ if environ is None else environ
    if path is None and env.get("KEYGATE_CONFIG"):
        path = env["KEYGATE_CONFIG"]
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except PermissionError:
            raise ConfigError(f"{source}: permission denied") from None
        except IsADirectoryError:
            raise ConfigError(f"{source}: is a directory, not a TOML file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML ({exc})") from None
    return _build(raw, env, overrides or {}, source)


def _build(
    raw: dict[str, Any],
    env: Mapping[str, str],
    overrides: Mapping[str, Mapping[str, Any]],
    source: str,
) -> Settings:
    unknown = set(raw) - set(SECTIONS) - {"routes"}
    if unknown:
        raise ConfigError(f"{source}: unknown section [{sorted(unknown)[0]}]")
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            if name not in fields:
                raise ConfigError(f"{source}: {section}.{name}: unknown setting")
            kwargs[name] = _coerce(source, f"{section}.{name}", fields[name].type, value)
        for name, f in fields.items():
            env_name = f"{ENV_PREFIX}{section.upper()}_{name.upper()}"
            if env_name in env:
                where = f"environment {env_name}"
                kwargs[name] = _coerce(where, f"{section}.{name}", f.type, env[env_name], text=True)
        for name, value in overrides.get(section, {}).items():
            kwargs[name] = _coerce("command line", f"{section}.{name}", fields[name].type, value)
        built[section] = cls(**kwargs)
        _validate_section(source, section, built[section])
    routes = raw.get("routes", [])
    if not isinstance(routes, list):
        raise ConfigError(f"{source}: routes must be an array of tables ([[routes]])")
    route_objs = tuple(_route(source, i, r) for i, r in enumerate(routes))
    names = [r.name for r in route_objs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"{source}: routes: duplicate route name {dup!r}")
    prefixes = [r.prefix for r in route_objs]
    dup = next((p for p in prefixes if prefixes.count(p) > 1), None)
    if dup:
        raise ConfigError(f"{source}: routes: duplicate route prefix {dup!r}")
    admin = built["server"].admin_prefix
    for r in route_objs:
        if r.prefix == admin or r.prefix.startswith(admin + "/"):
            raise ConfigError(
                f"{source}: routes.{r.name}.prefix: lies under server.admin_prefix, "
                "which is never proxied"
            )
    return Settings(
        server=built["server"],
        store=built["store"],
        auth=built["auth"],
        routes=route_objs,
        source=source,
    )


def _route(source: str, index: int, raw: Any) -> Route:
    where = f"routes[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: must be a table")
    fields = {f.name: f for f in dataclasses.fields(Route)}
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in fields:
            raise ConfigError(f"{source}: {where}.{name}: unknown setting")
        kwargs[name] = _coerce(source, f"{where}.{name}", fields[name].type, value)
    for required in ("name", "prefix", "upstream"):
        if required not in kwargs:
            raise ConfigError(f"{source}: {where}.{required}: missing (required)")
    name = kwargs["name"]
    where = f"routes.{name}"
    if not _NAME_RE.match(name):
        raise ConfigError(f"{source}: {where}.name: must match [a-z0-9][a-z0-9_-]{{0,63}}")
    kwargs["prefix"] = normalise_prefix(source, where, kwargs["prefix"])
    kwargs["upstream"] = check_upstream(source, f"{where}.upstream", kwargs["upstream"])
    route = Route(**kwargs)
    if route.timeout <= 0:
        raise ConfigError(f"{source}: {where}.timeout: must be greater than 0")
    if route.max_body_bytes is not None and route.max_body_bytes < 0:
        raise ConfigError(f"{source}: {where}.max_body_bytes: must be 0 or more")
    if route.max_connections < 1:
        raise ConfigError(f"{source}: {where}.max_connections: must be at least 1")
    if route.method_override not in METHOD_OVERRIDE_MODES:
        raise ConfigError(f"{source}: {where}.method_override: must be \"check\" or \"ignore\"")
    return route


def with_upstream(settings: Settings, upstream: str) -> Settings:
    """``serve --upstream URL``: one route ``default`` at ``/`` to URL (SPEC §2).

    Configured routes stay (longest prefix still wins); a configured route named
    ``default`` or at ``/`` is replaced by the command-line one.
    """
    url = check_upstream("command line", "--upstream", upstream)
    kept = tuple(r for r in settings.routes if r.name != "default" and r.prefix != "/")
    route = Route(name="default", prefix="/", upstream=url)
    return dataclasses.replace(settings, routes=(*kept, route))


def normalise_prefix(source: str, where: str, prefix: str) -> str:
    if not prefix.startswith("/"):
        raise ConfigError(f"{source}: {where}.prefix: must start with '/'")
    if any(seg in (".", "..") for seg in prefix.split("/")) or "%" in prefix or "\\" in prefix:
        raise ConfigError(f"{source}: {where}.prefix: must be a plain, normalised path")
    if "//" in prefix or "?" in prefix or "#" in prefix:
        raise ConfigError(f"{source}: {where}.prefix: must be a plain, normalised path")
    return prefix.rstrip("/") or "/"


def check_upstream(source: str, where: str, value: str) -> str:
    try:
        url = URL(value)
    except (ValueError, TypeError):
        raise ConfigError(f"{source}: {where}: not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{source}: {where}: must be an http:// or https:// URL with a host")
    if url.query_string or url.fragment or url.user or url.password:
        raise ConfigError(f"{source}: {where}: must not carry a query, fragment or credentials")
    return str(url.with_path(url.path.rstrip("/")))


def _validate_section(source: str, section: str, value: Any) -> None:
    def fail(name: str, problem: str) -> typing.NoReturn:
        raise ConfigError(f"{source}: {section}.{name}: {problem}")

    if isinstance(value, ServerSettings):
        host, sep, port = value.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            fail("listen", "must be host:port, for example 127.0.0.1:8080")
        if value.workers < 1:
            fail("workers", "must be at least 1")
        p = value.admin_prefix
        if not p.startswith("/") or p == "/" or p.endswith("/") or "//" in p:
            fail("admin_prefix", "must be a path like /_keygate (not '/')")
        if any(seg in (".", "..") for seg in p.split("/")) or "%" in p:
            fail("admin_prefix", "must be a plain, normalised path")
        for name in ("header_timeout", "body_idle_timeout", "shutdown_timeout"):
            if getattr(value, name) <= 0:
                fail(name, "must be greater than 0")
        for name in ("max_header_count", "max_header_bytes", "max_line_bytes"):
            if getattr(value, name) < 1:
                fail(name, "must be at least 1")
    elif isinstance(value, StoreSettings):
        if not (
            value.url.startswith("sqlite://")
            or value.url.startswith("postgresql://")
            or value.url.startswith("postgres://")
        ):
            fail("url", "must start with sqlite://, postgresql:// or postgres://")
        if value.pool_size < 1:
            fail("pool_size", "must be at least 1")
        if value.change_poll_interval <= 0:
            fail("change_poll_interval", "must be greater than 0")
    elif isinstance(value, AuthSettings):
        if not _PREFIX_RE.match(value.key_prefix):
            fail("key_prefix", "must be 1-16 letters or digits")
        if not value.sources:
            fail("sources", "must name at least one source")
        for s in value.sources:
            if not SOURCE_RE.match(s):
                fail(
                    "sources",
                    f"unknown source {s!r} "
                    "(use authorization, x-api-key, basic or query:<name>)",
                )
        if len(set(value.sources)) != len(value.sources):
            fail("sources", "lists a source twice")
        if value.cache_size < 1:
            fail("cache_size", "must be at least 1")
        for name in ("cache_ttl", "negative_cache_ttl", "last_used_flush_interval"):
            if getattr(value, name) <= 0:
                fail(name, "must be greater than 0")
        if value.max_keys_per_user < 1:
            fail("max_keys_per_user", "must be at least 1")
        if not 0 <= value.refusal_delay <= 10:
            fail("refusal_delay", "must be from 0 (off) to 10 seconds")


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, "a list"
    )


def _coerce(source: str, name: str, tp: Any, value: Any, *, text: bool = False) -> Any:
    """Check ``value`` against the dataclass field type, converting env strings."""
    if isinstance(tp, str):
        tp = _resolve(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (text and value.strip().lower() in ("", "none", "null")):
            return None
        return _coerce(source, name, inner[0], value, text=text)
    if origin is tuple:
        item = args[0]
        if text:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {name}: must be a list")
        return tuple(_coerce(source, name, item, v, text=text) for v in value)
    if tp in (ipaddress.IPv4Network, ipaddress.IPv6Network) or name.endswith("trusted_proxies"):
        try:
            return ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            raise ConfigError(f"{source}: {name}: not an IP network (CIDR)") from None
    if text:
        try:
            if tp is bool:
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if tp is int:
                return int(value)
            if tp is float:
                return _finite(source, name, float(value))
        except ValueError:
            raise ConfigError(f"{source}: {name}: must be {_type_name(tp)}") from None
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float):
        return _finite(source, name, value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{source}: {name}: must be {_type_name(tp)}")
    if not isinstance(value, tp):
        raise ConfigError(f"{source}: {name}: must be {_type_name(tp)}")
    return value


def _finite(source: str, name: str, value: float) -> float:
    # TOML and float() both accept nan and inf: a timeout of inf (or nan, which
    # passes every "> 0" check) would silently switch a limit off.
    if not math.isfinite(value):
        raise ConfigError(f"{source}: {name}: must be a finite number")
    return value


def _resolve(tp: str) -> Any:
    from keygate.config import settings

    return eval(tp, vars(settings))  # noqa: S307 - dataclass annotations we wrote ourselves


def sqlite_path(url: str) -> str:
    """``sqlite:///rel/x.db`` → ``rel/x.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    if not url.startswith("sqlite://"):
        raise ConfigError(f"store.url: not a sqlite:// URL ({url.partition(':')[0]}://…)")
    rest = url[len("sqlite://") :]
    if rest.startswith("/"):
        rest = rest[1:]
    if not rest:
        raise ConfigError("store.url: sqlite URL names no file")
    return rest
