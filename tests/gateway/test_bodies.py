"""gateway.service.bodies: admin request bodies decoded against their declarations."""

from __future__ import annotations

from typing import Any

import pytest
from msgspec import UNSET

from keygate.gateway.errors import BadRequest
from keygate.gateway.service import bodies


def test_bodies_valid_key_create_has_declared_defaults() -> None:
    body, errors = bodies.decode(bodies.KeyCreate, {"groups": ["default"]})
    assert errors == {}
    assert body.groups == ["default"]
    assert (body.name, body.expires_at, body.expires_in) == (UNSET, UNSET, UNSET)
    assert (body.description, body.owner, body.webhook_url, body.metadata) == ("", None, None, {})


def test_bodies_every_refused_field_has_a_reason() -> None:
    body, errors = bodies.decode(
        bodies.KeyCreate,
        {"name": "", "groups": "x", "bogus": 1, "expires_in": True, "webhook_url": "ftp://x"},
    )
    assert set(errors) == {"name", "groups", "bogus", "expires_in", "webhook_url"}
    assert errors["bogus"] == "unknown field"
    assert (body.name, body.groups, body.expires_in, body.webhook_url) == (UNSET,) * 4


def test_bodies_missing_required_field_is_required() -> None:
    body, errors = bodies.decode(bodies.UserCreate, {"role": "admin"})
    assert errors == {"username": "required"}
    assert body.username is UNSET and body.role == "admin"


@pytest.mark.parametrize("raw", [None, [], "x", 5])
def test_bodies_non_object_is_400(raw: Any) -> None:
    with pytest.raises(BadRequest):
        bodies.decode(bodies.KeyPatch, raw)


@pytest.mark.parametrize(
    ("cls", "raw", "field", "expected"),
    [
        (bodies.RollRequest, {"grace_seconds": 60.0}, "grace_seconds", 60),
        (bodies.KeyPatch, {"expires_in": 3600.0}, "expires_in", 3600),
    ],
)
def test_bodies_integral_number_is_an_integer(
    cls: type[bodies.Body], raw: dict[str, Any], field: str, expected: int
) -> None:
    body, errors = bodies.decode(cls, raw)
    assert errors == {}
    assert getattr(body, field) == expected and type(getattr(body, field)) is int


@pytest.mark.parametrize("value", [1.5, "10", True, float("inf"), -1, 30 * 86400 + 1])
def test_bodies_bad_grace_seconds_is_refused(value: Any) -> None:
    _, errors = bodies.decode(bodies.RollRequest, {"grace_seconds": value})
    assert errors == {"grace_seconds": "must be an integer from 0 to 2592000"}


def test_bodies_metadata_keeps_its_numbers_as_sent() -> None:
    body, errors = bodies.decode(bodies.KeyPatch, {"metadata": {"a": 1.0}})
    assert errors == {} and body.metadata == {"a": 1.0}
    assert type(body.metadata["a"]) is float  # type: ignore[index]


def test_bodies_both_expiry_fields_refuse_the_second() -> None:
    body, errors = bodies.decode(bodies.KeyPatch, {"expires_at": None, "expires_in": 60})
    assert errors == {"expires_in": "give expires_at or expires_in, not both"}
    assert body.expires_at is UNSET and body.expires_in is UNSET


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        (
            "webhook_url",
            "http://:80/",
            "must be an http(s) URL of at most 2048 characters, or null",
        ),
        ("metadata", {"a": "\u0000"}, "must not contain NUL characters"),
        ("metadata", {"a": "x" * 17000}, "must serialise to at most 16384 bytes"),
        ("expires_at", "2999-01-01T00:00:00", "must carry a time zone (for example Z)"),
        ("expires_at", "tomorrow", "must be an RFC 3339 time or null"),
        ("expires_in", "99999999w", "must be within 100 years"),
    ],
)
def test_bodies_checks_what_no_schema_keyword_states(field: str, value: Any, reason: str) -> None:
    body, errors = bodies.decode(bodies.KeyPatch, {field: value})
    assert errors == {field: reason}
    assert getattr(body, field) is UNSET


@pytest.mark.parametrize("name", ["a\n", " a", "a ", "a\tb", "\u202ea", ""])
def test_bodies_key_name_is_one_line_without_outer_spaces(name: str) -> None:
    _, errors = bodies.decode(bodies.KeyPatch, {"name": name})
    assert set(errors) == {"name"}


def test_bodies_every_body_declares_accepted_examples() -> None:
    for cls in bodies.BODIES:
        assert cls.examples, cls.__name__
        for example in cls.examples:
            assert bodies.decode(cls, example)[1] == {}, (cls.__name__, example)


@pytest.mark.parametrize(
    ("shape", "body", "field"),
    [
        (bodies.UserCreate, {"username": "alice\n"}, "username"),
        (bodies.GroupCreate, {"name": "ops\n", "rules": []}, "name"),
        (bodies.KeyCreate, {"groups": ["default\n"]}, "groups"),
    ],
)
def test_a_name_ending_in_a_line_feed_is_refused(
    shape: type, body: dict[str, object], field: str
) -> None:
    # Python's "$" matches before a final newline; the declared patterns must not.
    _, errors = bodies.decode(shape, body)
    assert field in errors
