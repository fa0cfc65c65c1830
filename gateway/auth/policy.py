"""Routes and permission rules (docs/reference.md#rule-syntax) — pure, compiled once.

A rule is ``{"route": name | "*", "methods": [...] | ["*"], "paths": [glob, ...]}``.
Globs match the whole normalised request path: ``*`` is exactly one non-empty
segment, ``**`` zero or more segments (``/a/**`` matches ``/a``, ``/a/`` and
everything below), every other character is literal.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from keygate.config.declare import NAME_PATTERN
from keygate.config.settings import Route
from keygate.gateway.errors import BadPath
from keygate.gateway.request.pathnorm import normalise_path

MAX_RULES = 100
MAX_GLOB_LENGTH = 1024
_NAME_RE = re.compile(NAME_PATTERN)
_METHOD_RE = re.compile(r"[A-Z]{1,20}")
_RULE_KEYS = frozenset({"route", "methods", "paths"})
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# A "." or ".." segment, possibly percent-encoded: a glob holding one would be
# resolved away by normalisation, which is never what its author meant.
_DOT_SEGMENT_RE = re.compile(r"(?:\.|%2[eE]){1,2}")
# Distinct (groups, route) combinations are few (one per key shape); the cap
# only stops a pathological caller from growing the memo without bound.
_MEMO_MAX = 4096

_Matcher = Callable[[str], re.Match[str] | None]
# Per (groups, route): a matcher per method named in some rule, and the matcher
# for every other method (rules with ["*"]); None means nothing is allowed.
_Entry = tuple[dict[str, _Matcher], _Matcher | None]


@functools.lru_cache(maxsize=1024)
def _prefix_key(prefix: str) -> str:
    # Route prefixes are compared with normalised paths, so a non-ASCII prefix
    # must be percent-encoded the same way; "/" becomes "". Cached because
    # upstream_path needs it on every request.
    return normalise_path(prefix).rstrip("/")


class RouteTable:
    """Longest segment-wise prefix match of a path onto the configured routes."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._by_prefix: dict[str, Route] = {}
        for route in routes:
            try:
                key = _prefix_key(route.prefix)
            except BadPath:
                raise ValueError(f"route {route.name!r}: prefix is not a valid path") from None
            other = self._by_prefix.setdefault(key, route)
            if other is not route:
                raise ValueError(f"routes {other.name!r} and {route.name!r} share a prefix")
        self._root = self._by_prefix.pop("", None)
        self._max_len = max(map(len, self._by_prefix), default=0)

    def match(self, path: str) -> Route | None:
        """The route whose prefix is the longest one covering ``path`` (normalised)."""
        table = self._by_prefix
        end = len(path)
        if end > self._max_len:
            # Skip candidates longer than every prefix: one lookup per segment
            # of the longest prefix at most, however deep the request path.
            end = path.rfind("/", 0, self._max_len + 1)
        while end > 0:
            route = table.get(path[:end])
            if route is not None:
                return route
            end = path.rfind("/", 0, end)
        return self._root


def upstream_path(route: Route, path: str) -> str:
    """The path to send upstream: ``path`` minus the route prefix if ``strip_prefix``.

    ``path`` must be normalised and covered by ``route`` (see :meth:`RouteTable.match`).
    """
    if not route.strip_prefix:
        return path
    rest = path[len(_prefix_key(route.prefix)) :]
    return rest if rest.startswith("/") else "/" + rest


def _glob_regex(glob: str) -> str:
    """Regex source for a normalised, validated glob, safe from catastrophic backtracking.

    ``**`` followed by more segments becomes an atomic group that commits to the
    leftmost occurrence of the next run of segments: for globs that is always a
    correct choice (``**`` can absorb whatever follows), and it keeps matching
    linear per ``**`` instead of exponential in their number.
    """
    segments = glob[1:].split("/")
    out: list[str] = []
    i = 0
    while i < len(segments):
        segment = segments[i]
        if segment != "**":
            out.append("/[^/]++" if segment == "*" else "/" + re.escape(segment))
            i += 1
            continue
        while i < len(segments) and segments[i] == "**":
            i += 1  # "/**/**" is the same as "/**"
        run: list[str] = []
        while i < len(segments) and segments[i] != "**":
            run.append("/[^/]++" if segments[i] == "*" else "/" + re.escape(segments[i]))
            i += 1
        if not run:
            out.append("(?:/.*)?")  # trailing "**": anything below, or nothing
        elif i == len(segments):
            # Last run: anchored at the end, so it must not commit to the leftmost.
            out.append("(?:/.*?)??" + "".join(run))
        else:
            # The lookahead makes the run end on a segment boundary, so "/a"
            # cannot commit to the start of "/ab".
            out.append("(?>(?:/.*?)??" + "".join(run) + "(?=/|\\Z))")
    return "".join(out)


def _check_glob(glob: object) -> tuple[str, str]:
    """``(normalised glob, "")`` or ``("", reason)``."""
    if not isinstance(glob, str):
        return "", "must be a string"
    if not glob.startswith("/"):
        return "", "must start with '/'"
    if len(glob) > MAX_GLOB_LENGTH:
        return "", f"must be at most {MAX_GLOB_LENGTH} characters"
    if _CONTROL_RE.search(glob):
        return "", "must not contain control characters"
    try:
        normal = normalise_path(glob)
    except BadPath:
        return "", "is not a valid path"
    for segment in glob[1:].split("/"):
        if _DOT_SEGMENT_RE.fullmatch(segment):
            return "", "must not contain '.' or '..' segments"
    for segment in normal[1:].split("/"):
        if "*" in segment and segment not in ("*", "**"):
            return "", "'*' and '**' must be whole segments"
    return normal, ""


def _check_list(value: object, what: str) -> str:
    if not isinstance(value, list) or not value:
        return f"must be a non-empty list of {what}"
    return ""


def validate_rules(
    rules: object, route_names: Collection[str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Check a JSON-decoded ``rules`` value; return (normalised copy, errors by field).

    The copy drops duplicate methods and paths and normalises each glob as a
    request path is normalised (so ``/%7Eu`` becomes ``/~u`` and ``/é`` its
    UTF-8 escape, as requests will be). It is only meaningful when the errors
    dict is empty.
    """
    errors: dict[str, str] = {}
    if not isinstance(rules, list):
        return [], {"rules": "must be a list"}
    if len(rules) > MAX_RULES:
        return [], {"rules": f"must hold at most {MAX_RULES} rules"}
    out: list[dict[str, Any]] = []
    for n, rule in enumerate(rules):
        where = f"rules[{n}]"
        if not isinstance(rule, dict):
            errors[where] = "must be an object"
            continue
        for key in rule:
            if key not in _RULE_KEYS:
                errors[f"{where}.{key}"] = "unknown field"
        for key in sorted(_RULE_KEYS - rule.keys()):
            errors[f"{where}.{key}"] = "required"

        route = rule.get("route")
        if "route" in rule:
            if not isinstance(route, str) or not (route == "*" or _NAME_RE.search(route)):
                errors[f"{where}.route"] = "must be a route name or '*'"
            elif route_names is not None and route != "*" and route not in route_names:
                errors[f"{where}.route"] = "unknown route"

        methods = rule.get("methods")
        if "methods" in rule and (reason := _check_list(methods, "methods")):
            errors[f"{where}.methods"] = reason
        elif isinstance(methods, list) and methods != ["*"]:
            for m, method in enumerate(methods):
                if not isinstance(method, str) or not _METHOD_RE.fullmatch(method):
                    errors[f"{where}.methods[{m}]"] = "must be an upper-case method or ['*']"

        paths = rule.get("paths")
        normal_paths: list[str] = []
        if "paths" in rule and (reason := _check_list(paths, "paths")):
            errors[f"{where}.paths"] = reason
        elif isinstance(paths, list):
            for p, glob in enumerate(paths):
                normal, reason = _check_glob(glob)
                if reason:
                    errors[f"{where}.paths[{p}]"] = reason
                else:
                    normal_paths.append(normal)

        out.append(
            {
                "route": route,
                # Only strings survive: a bad item has its error already, and an
                # unhashable one (a list or object) must not break de-duplication.
                "methods": list(dict.fromkeys(m for m in methods if isinstance(m, str)))
                if isinstance(methods, list)
                else [],
                "paths": list(dict.fromkeys(normal_paths)),
            }
        )
    return out, errors


def _combine(sources: Iterable[str]) -> _Matcher | None:
    unique = list(dict.fromkeys(sources))
    if not unique:
        return None
    return re.compile("|".join(f"(?:{s})" for s in unique), re.DOTALL).fullmatch


class _Rule:
    __slots__ = ("methods", "regex", "route")

    def __init__(self, rule: Mapping[str, Any]) -> None:
        self.route: str = rule["route"]
        methods = rule["methods"]
        self.methods: frozenset[str] | None = None if methods == ["*"] else frozenset(methods)
        self.regex = "|".join(f"(?:{_glob_regex(g)})" for g in rule["paths"])


class Policy:
    """Every group's rules, compiled once; :meth:`allows` answers
    docs/reference.md#how-a-request-is-allowed."""

    def __init__(self, groups: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        self._groups: dict[str, tuple[_Rule, ...]] = {}
        for name, rules in groups.items():
            normal, errors = validate_rules([dict(rule) for rule in rules])
            if errors:
                # validate_rules guards every write, so this is a corrupt store.
                raise ValueError(f"group {name!r}: invalid rules: {errors}")
            self._groups[name] = tuple(_Rule(rule) for rule in normal)
            for rule in self._groups[name]:
                re.compile(rule.regex)  # fail here, not on a request
        self._memo: dict[tuple[Collection[str], str], _Entry] = {}

    def allows(self, groups: Iterable[str], route: str, method: str, path: str) -> bool:
        """True when a rule of one of ``groups`` matches route, method and path."""
        key = (groups if isinstance(groups, tuple | frozenset) else tuple(groups), route)
        entry = self._memo.get(key)
        if entry is None:
            entry = self._build(key)
        by_method, any_method = entry
        matcher = by_method.get(method, any_method)
        return matcher is not None and matcher(path) is not None

    def allows_every_method(self, groups: Iterable[str], route: str, path: str) -> bool:
        """True when a rule allowing every method (``["*"]``) matches route and path:
        then no method a request could ask for is refused there."""
        key = (groups if isinstance(groups, tuple | frozenset) else tuple(groups), route)
        entry = self._memo.get(key)
        if entry is None:
            entry = self._build(key)
        any_method = entry[1]
        return any_method is not None and any_method(path) is not None

    def _build(self, key: tuple[Collection[str], str]) -> _Entry:
        # One alternation per method: a request costs one dict lookup and one
        # regex run, however many rules and groups apply.
        names, route = key
        rules = [
            rule
            for name in names
            for rule in self._groups.get(name, ())
            if rule.route in (route, "*")
        ]
        named = {m for rule in rules if rule.methods is not None for m in rule.methods}
        by_method = {
            m: _combine(r.regex for r in rules if r.methods is None or m in r.methods)
            for m in named
        }
        entry = (
            {m: matcher for m, matcher in by_method.items() if matcher is not None},
            _combine(r.regex for r in rules if r.methods is None),
        )
        if len(self._memo) >= _MEMO_MAX:
            self._memo.clear()
        self._memo[key] = entry
        return entry
