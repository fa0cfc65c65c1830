"""Load :class:`Settings` from a TOML file, ``KEYGATE_*`` environment overrides
and command-line flags (docs/reference.md#where-settings-come-from).

What a valid value is comes from the declarations in :mod:`config.settings`;
this module reads the layers, turns environment text into the declared type,
and checks what spans settings. Every problem raises :class:`ConfigError`
whose message is one line naming where the value came from (the file, the
environment variable or the command line), the setting and what is wrong.
Values of settings are never echoed, so a database password in ``store.url``
cannot leak into a terminal or a log.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any

from yarl import URL

from keygate.config.declare import Declared, bare_type, declared
from keygate.config.settings import (
    AuthSettings,
    ForwardAuthSettings,
    MetricsSettings,
    RateLimitSettings,
    Route,
    ServerSettings,
    Settings,
    StoreSettings,
    WebhookEndpoint,
    WebhookSettings,
)
from keygate.gateway.webhooks import ssrf

ENV_PREFIX = "KEYGATE_"
SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "store": StoreSettings,
    "auth": AuthSettings,
    "ratelimit": RateLimitSettings,
    "webhooks": WebhookSettings,
    "forward_auth": ForwardAuthSettings,
    "metrics": MetricsSettings,
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


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
    endpoints: tuple[WebhookEndpoint, ...] = ()
    for section, cls in SECTIONS.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        if section == "webhooks":
            values = dict(values)
            endpoints = _endpoints(source, values.pop("endpoints", []))
        built[section] = _section(source, section, cls, values, env, overrides.get(section, {}))
    built["webhooks"] = dataclasses.replace(built["webhooks"], endpoints=endpoints)
    _check_endpoints(source, built["webhooks"])
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
    _check_tls(source, built["server"])
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
        ratelimit=built["ratelimit"],
        webhooks=built["webhooks"],
        forward_auth=built["forward_auth"],
        metrics=built["metrics"],
        routes=route_objs,
        source=source,
    )


def _check_tls(source: str, server: ServerSettings) -> None:
    """The certificate and its key go together; mutual TLS needs TLS."""
    if (server.tls_cert_file is None) != (server.tls_key_file is None):
        missing = "tls_key_file" if server.tls_key_file is None else "tls_cert_file"
        raise ConfigError(
            f"{source}: server.{missing}: missing (tls_cert_file and tls_key_file go together)"
        )
    if server.tls_client_ca_file is not None and server.tls_cert_file is None:
        raise ConfigError(
            f"{source}: server.tls_client_ca_file: needs tls_cert_file and tls_key_file"
        )


def _section(
    source: str,
    section: str,
    cls: type,
    values: Mapping[str, Any],
    env: Mapping[str, str],
    overrides: Mapping[str, Any],
) -> Any:
    """One table: each layer's values must have the declared type; the value
    that wins (file, then environment, then command line) must be valid, and
    a problem names the layer it came from."""
    fields = declared(cls)
    chosen: dict[str, tuple[str, Any]] = {}
    for name, value in values.items():
        if name not in fields:
            raise ConfigError(f"{source}: {section}.{name}: unknown setting")
        chosen[name] = (source, _typed(source, f"{section}.{name}", fields[name], value))
    for name, f in fields.items():
        env_name = f"{ENV_PREFIX}{section.upper()}_{name.upper()}"
        if env_name in env:
            where = f"environment {env_name}"
            value = _from_text(where, f"{section}.{name}", f, env[env_name])
            chosen[name] = (where, _typed(where, f"{section}.{name}", f, value))
    for name, value in overrides.items():
        where = "command line"
        chosen[name] = (where, _typed(where, f"{section}.{name}", fields[name], value))
    kwargs = {
        name: _valid(where, f"{section}.{name}", fields[name], value)
        for name, (where, value) in chosen.items()
    }
    return cls(**kwargs)


def _table(source: str, where: str, raw: Any, fields: dict[str, Declared]) -> dict[str, Any]:
    """One table of an array of tables (a route, an endpoint): its values typed,
    unknown and missing settings refused."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: must be a table")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in fields:
            raise ConfigError(f"{source}: {where}.{name}: unknown setting")
        values[name] = _typed(source, f"{where}.{name}", fields[name], value)
    for name, f in fields.items():
        if f.required and name not in values:
            raise ConfigError(f"{source}: {where}.{name}: missing (required)")
    return values


def _route(source: str, index: int, raw: Any) -> Route:
    fields = declared(Route)
    values = _table(source, f"routes[{index}]", raw, fields)
    where = f"routes.{values['name']}"
    kwargs = {n: _valid(source, f"{where}.{n}", fields[n], v) for n, v in values.items()}
    kwargs["prefix"] = normalise_prefix(source, where, kwargs["prefix"])
    kwargs["upstream"] = check_upstream(source, f"{where}.upstream", kwargs["upstream"])
    return Route(**kwargs)


def _endpoints(source: str, raw: Any) -> tuple[WebhookEndpoint, ...]:
    """[[webhooks.endpoints]]: each judged like a route; a secret is never echoed."""
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: webhooks.endpoints must be an array of tables")
    fields = declared(WebhookEndpoint)
    out = []
    for index, table in enumerate(raw):
        where = f"webhooks.endpoints[{index}]"
        values = _table(source, where, table, fields)
        kwargs = {n: _valid(source, f"{where}.{n}", fields[n], v) for n, v in values.items()}
        out.append(WebhookEndpoint(**kwargs))
    urls = [e.url for e in out]
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{source}: webhooks.endpoints: the same url twice")
    return tuple(out)


def _check_endpoints(source: str, hooks: WebhookSettings) -> None:
    """An operator endpoint obeys the rules a key's webhook_url does
    (docs/webhooks.md#where-a-webhook-may-go): one that could never be sent
    to is refused at start, not abandoned event after event. A name is
    judged when delivered to (it may not resolve here and now)."""
    for index, endpoint in enumerate(hooks.endpoints):
        problem = ssrf.url_problem(endpoint.url, allow_http=hooks.allow_http)
        if problem is None:
            host = URL(endpoint.url).raw_host or ""
            problem = ssrf.host_problem(host, allow_private=hooks.allow_private)
        if problem is not None:
            raise ConfigError(f"{source}: webhooks.endpoints[{index}].url: {problem}")


def _typed(source: str, name: str, field: Declared, value: Any) -> Any:
    out, problem = field.judge_type(value)
    if problem is not None:
        raise ConfigError(f"{source}: {name}: {problem}")
    return out


def _valid(source: str, name: str, field: Declared, value: Any) -> Any:
    out, problem = field.judge(value)
    if problem is not None:
        raise ConfigError(f"{source}: {name}: {problem}")
    return out


def _from_text(source: str, name: str, field: Declared, text: str) -> Any:
    """An environment variable's text as the value of the declared type."""
    try:
        return _parse(bare_type(field.annotation), text)
    except ValueError:
        raise ConfigError(f"{source}: {name}: must be {field.type_words}") from None


def _parse(tp: Any, text: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.strip().lower() in ("", "none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse(inner[0], text) if len(inner) == 1 else text
    if origin is tuple:  # lists are comma-separated
        item = typing.get_args(tp)[0]
        return [_parse(item, v.strip()) for v in text.split(",") if v.strip()]
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(text)
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    return text


def with_upstream(settings: Settings, upstream: str) -> Settings:
    """``serve --upstream URL``: one route ``default`` at ``/`` to URL
    (docs/reference.md#serve---upstream).

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
