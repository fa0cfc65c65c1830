"""Every 409, worded once: what a store refuses becomes its Conflict."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from keygate.gateway.errors import Conflict
from keygate.gateway.service import conflicts
from keygate.gateway.store.errors import (
    GroupInUse,
    KeyLimitReached,
    KeyRevoked,
    StoreRefusal,
    UniqueViolation,
)

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"

REFUSALS = [
    (UniqueViolation("key_name"), "name_taken", "The owner already has a key with that name."),
    (UniqueViolation("username"), "username_taken", "That username is taken."),
    (UniqueViolation("group_name"), "group_exists", "A group with that name exists."),
    (UniqueViolation("other"), "conflict", "The record conflicts with an existing one."),
    (
        KeyLimitReached(10),
        "key_limit_reached",
        "The owner already holds 10 keys that are not revoked.",
    ),
    (KeyRevoked(), "key_revoked", "The key is revoked; revocation is final."),
    (
        GroupInUse(),
        "group_in_use",
        "The group is held by users or keys; delete with force=true.",
    ),
]


@pytest.mark.parametrize(("refusal", "code", "message"), REFUSALS)
def test_conflicts_store_refusal_becomes_its_409(
    refusal: StoreRefusal, code: str, message: str
) -> None:
    conflict = conflicts.from_refusal(refusal)
    assert (conflict.status, conflict.code, conflict.message) == (409, code, message)


def test_conflicts_store_refusals_raises_the_conflict_alone() -> None:
    with pytest.raises(Conflict) as info, conflicts.store_refusals():
        raise KeyLimitReached(3)
    assert info.value.code == "key_limit_reached"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_conflicts_store_refusals_lets_other_errors_through() -> None:
    with pytest.raises(ValueError), conflicts.store_refusals():
        raise ValueError("not a refusal")


def test_conflicts_every_code_is_in_the_reference() -> None:
    documented = set(re.findall(r"^\| 409 \| `([a-z_]+)` \|", REFERENCE.read_text(), re.M))
    worded = {conflicts.from_refusal(refusal).code for refusal, _, _ in REFUSALS}
    worded |= {conflicts.last_admin().code, conflicts.admin_exists().code}
    worded |= {conflicts.no_webhook_url().code, conflicts.webhook_gone().code}
    assert worded == documented
