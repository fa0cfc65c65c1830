"""What a reload (SIGHUP) changes in a running keygate.

See docs/reference.md#reloading-the-configuration.

Routes, the limits and timeouts of requests, trusted proxies, the key
sources, the refusal delay and the TLS files are read anew. What a running
process is built around — where and how it listens (including whether with
TLS), its workers, the store, the key cache, the admin prefix, the
webhook settings — takes a
restart: :func:`reloadable` keeps those as they run and names the ones the
new file changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from keygate.config.settings import Settings, StoreSettings, WebhookSettings

RESTART_ONLY: Final[dict[str, tuple[str, ...]]] = {
    "server": ("listen", "workers", "admin_prefix", "shutdown_timeout", "access_log", "fast_path"),
    "store": tuple(f.name for f in dataclasses.fields(StoreSettings)),
    "auth": (
        "key_prefix",
        "cache_size",
        "cache_ttl",
        "negative_cache_ttl",
        "last_used_flush_interval",
        "last_used_resolution",
        "max_keys_per_user",
    ),
    # The deliverer and the services are built with them (docs/webhooks.md).
    "webhooks": tuple(f.name for f in dataclasses.fields(WebhookSettings)),
    # Counting is set up when a worker starts (gateway/metrics/).
    "metrics": ("enabled",),
}
TLS_FILES: Final = ("tls_cert_file", "tls_key_file", "tls_client_ca_file")


def reloadable(running: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """``new`` with every restart-only setting as ``running`` has it, and the names
    (``section.setting``) of those ``new`` would have changed."""
    held: list[str] = []
    sections: dict[str, Any] = {}
    for section, names in RESTART_ONLY.items():
        now, then = getattr(running, section), getattr(new, section)
        kept = {n: getattr(now, n) for n in names if getattr(now, n) != getattr(then, n)}
        held += [f"{section}.{n}" for n in kept]
        sections[section] = dataclasses.replace(then, **kept) if kept else then
    server = sections["server"]
    if (running.server.tls_cert_file is None) != (server.tls_cert_file is None):
        # TLS turned on or off: the listening socket would have to be made anew.
        held.append("server.tls_cert_file")
        server = dataclasses.replace(server, **{n: getattr(running.server, n) for n in TLS_FILES})
    sections["server"] = server
    return dataclasses.replace(new, **sections), held
