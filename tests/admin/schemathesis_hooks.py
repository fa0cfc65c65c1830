"""schemathesis hooks for tests/admin/test_schemathesis.py, loaded by ``st run``
through ``SCHEMATHESIS_HOOKS`` in the schemathesis process.

The fuzzer is an admin (or a self-service member) of a throw-away keygate, and
its stateful phase rolls, revokes, disables, narrows and expires whatever keys
it finds, its own included, and may demote or disable its own user once it has
made another admin. Checked with a dead key, every later operation would only
answer 401/403 and test nothing. So the fuzzer's credential comes from this
auth provider: before each test case it asks ``GET /me`` whether the current
key still acts in its role, and when it does not, it makes the identity whole
again the way ``keygate`` on the command line does, through the services on the
same SQLite store (user restored to its role, a new key minted).

Configured by the test through the environment: ``KEYGATE_FUZZ_URL`` (the admin
API base), ``KEYGATE_FUZZ_STORE`` (the SQLite file), ``KEYGATE_FUZZ_ROLE``
(``admin`` or ``member``), ``KEYGATE_FUZZ_MAX_KEYS``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from typing import Any

import requests
import schemathesis

from keygate.config.settings import AuthSettings
from keygate.gateway.service import Actor, ServiceContext, Services
from keygate.gateway.store.sqlite.store import SQLiteStore

BASE = os.environ.get("KEYGATE_FUZZ_URL", "")
STORE = os.environ.get("KEYGATE_FUZZ_STORE", "")
ROLE = os.environ.get("KEYGATE_FUZZ_ROLE", "admin")
MAX_KEYS = int(os.environ.get("KEYGATE_FUZZ_MAX_KEYS", "100000"))

USERNAME = f"fuzz-{ROLE}"
GROUP = "admin" if ROLE == "admin" else "self-service"
USER_BODY: dict[str, Any] = (
    {"role": "admin", "groups": []}
    if ROLE == "admin"
    else {"role": "member", "groups": ["self-service", "default"]}
)


def acts_in_role(token: str) -> bool:
    """Whether ``token`` answers /me as a live key of the fuzzer's role."""
    reply = requests.get(
        f"{BASE}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    if reply.status_code != 200:
        return False
    me = reply.json()
    user, key = me["user"], me["key"]
    return (
        user["role"] == USER_BODY["role"]
        and user["status"] == "active"
        and all(g in user["groups"] for g in USER_BODY["groups"])
        and GROUP in key["groups"]
        and key["status"] == "active"
        and key["expires_at"] is None
    )


async def restore_identity() -> str:
    """The fuzzer's user in its role again, and a new key for it: its token."""
    store = SQLiteStore(STORE)
    await store.open()
    try:
        ctx = ServiceContext(store, replace(AuthSettings(), max_keys_per_user=MAX_KEYS))
        services = Services.build(ctx)
        operator = Actor.cli()
        if await store.get_user(USERNAME) is None:
            await services.users.create(operator, {"username": USERNAME, **USER_BODY})
        else:
            await services.users.update(operator, USERNAME, {**USER_BODY, "status": "active"})
        issued = await services.keys.create(operator, {"owner": USERNAME, "groups": [GROUP]})
        return issued.token
    finally:
        await store.close()


# No caching (refresh_interval=None): the provider is asked before every case,
# so a key the previous case destroyed is replaced before the next one.
@schemathesis.auth(refresh_interval=None)
class KeygateIdentity:
    def __init__(self) -> None:
        self.token: str | None = None

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
        if self.token is None or not acts_in_role(self.token):
            self.token = asyncio.run(restore_identity())
        return self.token

    def set(
        self, case: schemathesis.Case, data: str, context: schemathesis.AuthContext
    ) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
