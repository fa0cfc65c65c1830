"""One declaration per shape: a type that checks a value and describes it.

Settings (:mod:`config.settings`) and admin request bodies
(:mod:`gateway.service.bodies`) are declared as types whose ``Annotated``
metadata is a :class:`msgspec.Meta`: the constraints (``ge``, ``pattern``,
``max_length`` …) check values and become the OpenAPI schema
(``msgspec.json.schema_components``), and :func:`rule` adds what a JSON
Schema keyword cannot say, kept in ``Meta.extra`` next to the constraints:
the one-line *reason* given when a value breaks the declaration, a *check*
for a rule no keyword states (a URL's host, a JSON size), and a *decode*
for a value msgspec cannot build (an IP network).

Why msgspec and not pydantic. Measured on this machine (2 cores, CPython 3.11,
msgspec 0.23, pydantic 2.14), first with prototypes declaring the same
settings and bodies in each library, then with this implementation against
the hand-written code it replaced (medians; µs per call by timeit):

===========================================  ===========  ==========  ==========
                                             hand-written msgspec     pydantic
===========================================  ===========  ==========  ==========
prototypes: ``import keygate.gateway.cli``   214 ms       222 ms      274 ms
and the declarations (30 runs)
prototypes: ``-X importtime``, declarations  —            9 ms        56-67 ms
prototypes: valid key-create body            5.0 µs       2.3 µs      2.2 µs
prototypes: key-create body, 5 bad fields    1.5 µs       98 µs [1]   6.6 µs
``keygate keys list --help`` (60 runs)       224 ms       233 ms      —
valid key-create body, decoded and expiry    5.4 µs       6.1 µs      —
key-create body with 5 bad fields            1.7 µs       9 µs        —
===========================================  ===========  ==========  ==========

[1] msgspec.convert against each field's ``Annotated`` type, which msgspec
does not cache; the one-field probe structs below are cached.

* Start-up: every CLI command imports the settings and the services. msgspec
  costs about 9 ms of ``keygate … --help`` (msgspec itself about 6.5 ms);
  pydantic (with ``defer_build``) about 60 ms, a quarter of the command.
* Errors: the API answers 422 with a reason for *every* bad field. pydantic
  reports all errors natively, with structured kinds; msgspec stops at the
  first and words it in English. :func:`gateway.service.bodies.decode` converts
  a body whole and, only when that fails, judges each field against its own
  declaration (:meth:`Declared.judge`); the reasons are keygate's own with
  either library, declared next to the constraints.
* JSON Schema: msgspec's output is 2020-12 as OpenAPI 3.1 wants it, with
  ``#/components/schemas/{name}`` refs, and a field that may be absent
  (``UNSET``) is simply not required. pydantic's added a ``title`` to every
  property and ``default: null`` to optional non-nullable fields, and leaked
  ``ge``/``le`` as non-keywords where a validator wrapped a bounded integer
  (needed because its lax integers take ``"5"`` and ``true``, its strict ones
  refuse ``5.0``).
* Settings stay frozen, slotted standard dataclasses (msgspec reads their
  annotations; pydantic dataclasses would validate on every ``Route(...)`` and
  ``dataclasses.replace``), so attribute access on the hot path is unchanged.
* msgspec has no dependencies (pydantic brings four).

Regular expressions follow JSON Schema: they are searched, so each is anchored
with ``^``/``$``. Python's ``$`` also matches before a final newline, which
ECMA-262's does not: :data:`END` closes a pattern where a value must not end in
one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
import msgspec.inspect as mi

# End of the value in both dialects (see the module docstring).
END = r"$(?!\n)"
# Names of routes and groups; the name a group rule's "route" gives.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}" + END
FINITE = "must be a finite number"

# (problem or None) for a value msgspec has accepted.
Check = Callable[[Any], str | None]
# (value, problem or None) for a value msgspec cannot build itself.
Decode = Callable[[Any], tuple[Any, str | None]]


def rule(
    *,
    reason: str | None = None,
    check: Check | None = None,
    decode: Decode | None = None,
    **meta: Any,
) -> msgspec.Meta:
    """A :class:`msgspec.Meta` (``meta``: its constraints and documentation).

    ``reason`` words every failure of the value; without it a wrong type is
    worded from the type ("must be an integer") and a number out of bounds from
    the bounds ("must be at least 1"). ``check`` runs on an accepted value.
    """
    extra = {"reason": reason, "check": check, "decode": decode}
    return msgspec.Meta(**meta, extra={k: v for k, v in extra.items() if v is not None} or None)


Name = Annotated[
    str, rule(pattern=NAME_PATTERN, reason=f"must match {NAME_PATTERN[1 : -len(END)]}")
]


@dataclasses.dataclass(frozen=True, slots=True)
class Declared:
    """One field of a declared class, ready to judge values."""

    name: str
    annotation: Any
    required: bool
    integral: bool  # an integer is one of its types
    # Whether :meth:`accepted` can find a problem (a check, or a float to be finite).
    checked: bool
    reason: str | None
    check: Check | None
    decode: Decode | None
    type_words: str  # for a value of the wrong type
    value_words: str  # for a value of the right type that breaks a constraint
    probe: Any  # a one-field struct: msgspec caches what it learns of a struct
    bare_probe: Any  # the same without constraints

    def judge(self, value: Any) -> tuple[Any, str | None]:
        """``(value as declared, None)`` or ``(None, problem)``."""
        if self.decode is not None:
            return self.decode(value)
        try:
            out = msgspec.convert({"v": value}, self.probe).v
        except msgspec.ValidationError:
            return None, self._problem(value)
        problem = self.accepted(out)
        return (None, problem) if problem is not None else (out, None)

    def judge_type(self, value: Any) -> tuple[Any, str | None]:
        """Like :meth:`judge`, for the type alone (no constraint, no check)."""
        if self.decode is not None:
            return value, None
        try:
            out = msgspec.convert({"v": value}, self.bare_probe).v
        except msgspec.ValidationError:
            return None, self.reason or f"must be {self.type_words}"
        if isinstance(out, float) and not math.isfinite(out):
            return None, FINITE
        return out, None

    def accepted(self, value: Any) -> str | None:
        """The problem msgspec cannot see in a value it accepted, if any."""
        if isinstance(value, float) and not math.isfinite(value):
            # TOML, float() and JSON decoders accept nan and inf: a limit of inf
            # (or nan, which fails every comparison) would switch the limit off.
            return FINITE
        if self.check is not None and value is not None:
            return self.check(value)
        return None

    def _problem(self, value: Any) -> str:
        _, problem = self.judge_type(value)
        return problem or self.value_words


@functools.cache
def declared(cls: type) -> dict[str, Declared]:
    """The fields of a msgspec struct or a dataclass, by name (cached per class)."""
    if isinstance(cls, type) and issubclass(cls, msgspec.Struct):
        found = [(f.name, f.type, f.required) for f in msgspec.structs.fields(cls)]
    elif dataclasses.is_dataclass(cls):
        found = [
            (
                f.name,
                f.type,
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        ]
    else:
        raise TypeError(f"{cls!r} is neither a msgspec struct nor a dataclass")
    return {name: _declare(cls, name, tp, required) for name, tp, required in found}


def _declare(cls: type, name: str, annotation: Any, required: bool) -> Declared:
    if isinstance(annotation, str):
        raise TypeError(f"{cls.__name__}.{name}: annotations must be types, not strings")
    extra: dict[str, Any] = {}
    for meta in _metas(annotation):
        extra.update(meta.extra or {})
    decode = extra.get("decode")
    reason = extra.get("reason")
    probe = bare_probe = None
    type_words = value_words = ""
    if decode is None:
        probe = msgspec.defstruct(f"{cls.__name__}_{name}", [("v", annotation)])
        bare = bare_type(annotation)
        bare_probe = msgspec.defstruct(f"{cls.__name__}_{name}_type", [("v", bare)])
        info = mi.type_info(annotation)
        type_words = _type_words(info)
        words = reason or _bound_words(info)
        if words is None and _constrained(annotation):
            raise TypeError(f"{cls.__name__}.{name}: constraints without words; give a reason")
        value_words = words or f"must be {type_words}"
    return Declared(
        name=name,
        annotation=annotation,
        required=required,
        integral=_has(annotation, int),
        checked=extra.get("check") is not None or _has(annotation, float),
        reason=reason,
        check=extra.get("check"),
        decode=decode,
        type_words=type_words,
        value_words=value_words,
        probe=probe,
        bare_probe=bare_probe,
    )


def bare_type(tp: Any) -> Any:
    """``tp`` without its ``Annotated`` metadata, at any depth."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        return bare_type(args[0])
    if origin in (typing.Union, types.UnionType):
        return functools.reduce(operator.or_, [bare_type(a) for a in args])
    if origin in (list, tuple, dict, set, frozenset):
        return origin[tuple(a if a is Ellipsis else bare_type(a) for a in args)]
    if origin is typing.Literal:  # the values' type; which values, a constraint
        return functools.reduce(operator.or_, {type(a) for a in args})
    return tp


def _metas(tp: Any) -> list[msgspec.Meta]:
    """The Meta objects on ``tp`` itself or on one of its union members."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        inner, *metadata = typing.get_args(tp)
        return [m for m in metadata if isinstance(m, msgspec.Meta)] + _metas(inner)
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(tp) for m in _metas(arg)]
    return []


_CONSTRAINTS = ("gt", "ge", "lt", "le", "multiple_of", "pattern", "min_length", "max_length", "tz")


def _constrained(tp: Any) -> bool:
    """Whether any ``Meta`` in ``tp``, at any depth, constrains values."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        metas = [m for m in args[1:] if isinstance(m, msgspec.Meta)]
        if any(getattr(m, c) is not None for m in metas for c in _CONSTRAINTS):
            return True
        return _constrained(args[0])
    if origin is typing.Literal:
        return False  # worded from its values
    return any(_constrained(a) for a in args if a is not Ellipsis)


def _has(tp: Any, kind: type) -> bool:
    """Whether ``kind`` is ``tp`` or one of its union members."""
    bare = bare_type(tp)
    if typing.get_origin(bare) in (typing.Union, types.UnionType):
        return kind in typing.get_args(bare)
    return bare is kind


_TYPE_WORDS: dict[type, str] = {
    mi.StrType: "a string",
    mi.IntType: "an integer",
    mi.FloatType: "a number",
    mi.BoolType: "true or false",
    mi.ListType: "a list",
    mi.VarTupleType: "a list",
    mi.TupleType: "a list",
    mi.DictType: "a JSON object",
    mi.AnyType: "JSON",
}


def _type_words(node: mi.Type) -> str:
    """What a value must be, as the type and its values say; other constraints
    are the reason's or the bounds' to word."""
    if isinstance(node, mi.Metadata):
        return _type_words(node.type)
    if isinstance(node, mi.LiteralType):
        return "one of " + ", ".join(str(v) for v in node.values)
    if isinstance(node, mi.IntType) and node.ge is not None and node.le is not None:
        return f"an integer from {node.ge} to {node.le}"
    if isinstance(node, mi.UnionType):
        # null is left unsaid: settings have none, and every nullable body
        # field gives its own reason.
        return " or ".join(_type_words(t) for t in node.types if not isinstance(t, mi.NoneType))
    return _TYPE_WORDS.get(type(node), "a supported value")


def _bound_words(node: mi.Type) -> str | None:
    """A number's bounds as a sentence; None for any other constraint."""
    if isinstance(node, mi.Metadata):
        return _bound_words(node.type)
    if isinstance(node, mi.UnionType):
        words = [w for t in node.types if (w := _bound_words(t))]
        return words[0] if len(words) == 1 else None
    if not isinstance(node, mi.IntType | mi.FloatType):
        return None
    kind = "an integer " if isinstance(node, mi.IntType) else ""
    if node.ge is not None and node.le is not None:
        return f"must be {kind}from {node.ge} to {node.le}"
    if node.ge is not None:
        return f"must be at least {node.ge}"
    if node.gt is not None:
        return f"must be greater than {node.gt}"
    if node.le is not None:
        return f"must be at most {node.le}"
    return None
