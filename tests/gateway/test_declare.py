"""config.declare: a declared field judges values and words its problems from the declaration.

No ``from __future__ import annotations`` here: declared dataclasses need real
annotations (config.declare evaluates nothing).
"""

import dataclasses
import re
from typing import Annotated, Any, Literal

import msgspec
import pytest

from keygate.config.declare import END, FINITE, Name, declared, rule


def _check(value: str) -> str | None:
    return "must not say no" if value == "no" else None


@dataclasses.dataclass(frozen=True)
class Sample:
    count: Annotated[int, rule(ge=1)] = 1
    ratio: Annotated[float, rule(gt=0)] = 1.0
    grace: Annotated[int, rule(ge=0, le=9)] = 0
    mode: Literal["check", "ignore"] = "check"
    word: Annotated[str, rule(pattern="^[a-z]+$", reason="must be lower-case letters")] = "a"
    answer: Annotated[str, rule(check=_check)] | None = None
    name: Name = "n"


def judge(field: str, value: Any) -> tuple[Any, str | None]:
    return declared(Sample)[field].judge(value)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("count", "two", "must be an integer"),
        ("count", True, "must be an integer"),
        ("count", 0, "must be at least 1"),
        ("ratio", "soon", "must be a number"),
        ("ratio", 0, "must be greater than 0"),
        ("ratio", float("nan"), FINITE),
        ("ratio", float("inf"), FINITE),
        ("grace", "3", "must be an integer from 0 to 9"),
        ("grace", 10, "must be an integer from 0 to 9"),
        ("mode", "x", "must be one of check, ignore"),
        ("mode", 1, "must be one of check, ignore"),
        ("word", "A", "must be lower-case letters"),
        ("word", 5, "must be lower-case letters"),
        ("answer", "no", "must not say no"),
        ("name", "Not A Name", "must match [a-z0-9][a-z0-9_-]{0,63}"),
    ],
)
def test_declare_problem_is_worded_from_the_declaration(
    field: str, value: Any, problem: str
) -> None:
    assert judge(field, value) == (None, problem)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [("count", 3, 3), ("ratio", 2, 2.0), ("answer", None, None), ("answer", "yes", "yes")],
)
def test_declare_accepted_value_has_the_declared_type(
    field: str, value: Any, expected: Any
) -> None:
    out, problem = judge(field, value)
    assert problem is None
    assert out == expected and type(out) is type(expected)


def test_declare_judge_type_ignores_constraints() -> None:
    assert declared(Sample)["count"].judge_type(0) == (0, None)
    assert declared(Sample)["count"].judge_type("0") == (None, "must be an integer")


def test_declare_constraint_without_words_is_refused_at_declaration() -> None:
    class Unworded(msgspec.Struct):
        code: Annotated[str, rule(pattern="^[A-Z]+$")]

    with pytest.raises(TypeError, match=r"Unworded\.code"):
        declared(Unworded)


def test_declare_string_annotation_is_refused() -> None:
    @dataclasses.dataclass
    class Deferred:
        x: int

    Deferred.__dataclass_fields__["x"].type = "int"
    with pytest.raises(TypeError, match="not strings"):
        declared(Deferred)


@pytest.mark.parametrize(("value", "matches"), [("a", True), ("a\n", False), ("a\nb", False)])
def test_declare_end_refuses_a_final_newline(value: str, matches: bool) -> None:
    # Python's $ alone matches before a final newline; ECMA-262's does not.
    assert bool(re.search(f"^[a-z]+{END}", value)) is matches
