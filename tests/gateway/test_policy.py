"""Routes and permission rules (docs/reference.md#rule-syntax)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keygate.config.settings import Route
from keygate.gateway.auth.policy import Policy, RouteTable, upstream_path, validate_rules
from keygate.gateway.request.pathnorm import is_under


def _route(name: str, prefix: str, *, strip: bool = False) -> Route:
    return Route(name=name, prefix=prefix, upstream="http://127.0.0.1:9", strip_prefix=strip)


def _policy(*paths: str, methods: tuple[str, ...] = ("*",), route: str = "*") -> Policy:
    return Policy({"g": [{"route": route, "methods": list(methods), "paths": list(paths)}]})


def _ref_match(glob: list[str], path: list[str]) -> bool:
    """Reference glob semantics on segments, straight from docs/reference.md#rule-syntax."""
    if not glob:
        return not path
    head, rest = glob[0], glob[1:]
    if head == "**":
        return any(_ref_match(rest, path[i:]) for i in range(len(path) + 1))
    if not path:
        return False
    if head == "*":
        return path[0] != "" and _ref_match(rest, path[1:])
    return head == path[0] and _ref_match(rest, path[1:])


# --- RouteTable -------------------------------------------------------------

ROUTES = RouteTable(
    [
        _route("default", "/"),
        _route("billing", "/billing"),
        _route("billing-admin", "/billing/admin"),
        _route("deep", "/x/y/z"),
    ]
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "default"),
        ("/other", "default"),
        ("/billing", "billing"),
        ("/billing/", "billing"),
        ("/billing/invoices", "billing"),
        ("/billingx", "default"),
        ("/billing/admin", "billing-admin"),
        ("/billing/admin/users/1", "billing-admin"),
        ("/billing/administrator", "billing"),
        ("/x/y", "default"),
        ("/x/y/z/" + "a/" * 500, "deep"),
    ],
)
def test_route_table_match_longest_prefix_wins(path: str, expected: str) -> None:
    route = ROUTES.match(path)
    assert route is not None and route.name == expected


def test_route_table_no_root_route_none() -> None:
    table = RouteTable([_route("billing", "/billing")])
    assert table.match("/other") is None
    assert table.match("/") is None


def test_route_table_duplicate_prefix_value_error() -> None:
    with pytest.raises(ValueError, match="share a prefix"):
        RouteTable([_route("a", "/a"), _route("b", "/a/")])


def test_route_table_non_ascii_prefix_matches_normalised_path() -> None:
    table = RouteTable([_route("cafe", "/café")])
    route = table.match("/caf%C3%A9/menu")
    assert route is not None and route.name == "cafe"


_SEGMENTS = st.sampled_from(["a", "b", "ab"])


@given(
    st.lists(st.lists(_SEGMENTS, min_size=1, max_size=3), max_size=5, unique_by=tuple),
    st.lists(_SEGMENTS, max_size=5),
    st.booleans(),
)
def test_route_table_any_prefixes_longest_covering_wins(
    prefixes: list[list[str]], path_segments: list[str], root: bool
) -> None:
    routes = [_route(f"r{i}", "/" + "/".join(p)) for i, p in enumerate(prefixes)]
    if root:
        routes.append(_route("root", "/"))
    path = "/" + "/".join(path_segments)
    covering = [r for r in routes if is_under(path, r.prefix)]
    expected = max(covering, key=lambda r: len(r.prefix.rstrip("/")), default=None)
    assert RouteTable(routes).match(path) is expected


@pytest.mark.parametrize(
    ("prefix", "strip", "path", "expected"),
    [
        ("/billing", True, "/billing", "/"),
        ("/billing", True, "/billing/", "/"),
        ("/billing", True, "/billing/x/y", "/x/y"),
        ("/billing", False, "/billing/x", "/billing/x"),
        ("/", True, "/x", "/x"),
        ("/", True, "/", "/"),
    ],
)
def test_upstream_path_strip_prefix_starts_with_slash(
    prefix: str, strip: bool, path: str, expected: str
) -> None:
    assert upstream_path(_route("r", prefix, strip=strip), path) == expected


# --- Glob matching ----------------------------------------------------------


@pytest.mark.parametrize(
    ("glob", "path", "expected"),
    [
        ("/a/**", "/a", True),
        ("/a/**", "/a/", True),
        ("/a/**", "/a/b/c", True),
        ("/a/**", "/ab", False),
        ("/a/**", "/", False),
        ("/**", "/", True),
        ("/**", "/anything/at/all", True),
        ("/a/*", "/a/b", True),
        ("/a/*", "/a/", False),
        ("/a/*", "/a", False),
        ("/a/*", "/a/b/c", False),
        ("/a/*", "/a/b/", False),
        ("/a/*/c", "/a/b/c", True),
        ("/a/*/c", "/a/b/x/c", False),
        ("/a/**/c", "/a/c", True),
        ("/a/**/c", "/a/b/d/c", True),
        ("/a/**/c", "/a/bc", False),
        ("/a/**/c", "/ac", False),
        ("/a/**/c", "/a/c/d", False),
        ("/**/b", "/b/b", True),
        ("/**/a/**/b", "/ab/a/b", True),
        ("/**/a/**/b", "/ab/b", False),
        ("/**/*/a/**", "/x/ab/a", True),
        ("/a/**/", "/a/", True),
        ("/a/**/", "/a/b", False),
        ("/a", "/a", True),
        ("/a", "/a/", False),
        ("/a.b", "/axb", False),
        ("/a.b", "/a.b", True),
        ("/a+(b)$", "/a+(b)$", True),
        ("/a+(b)$", "/aa(b)", False),
        ("/[ab]", "/a", False),
        ("/café/*", "/caf%C3%A9/x", True),
        ("/%7Euser/*", "/~user/x", True),
    ],
)
def test_policy_allows_glob_matches_whole_path(glob: str, path: str, expected: bool) -> None:
    assert _policy(glob).allows(["g"], "r", "GET", path) is expected


def test_policy_allows_head_not_implied_by_get() -> None:
    policy = _policy("/**", methods=("GET",))
    assert policy.allows(["g"], "r", "GET", "/x")
    assert not policy.allows(["g"], "r", "HEAD", "/x")


def test_policy_allows_star_method_any_method() -> None:
    policy = _policy("/**")
    assert all(policy.allows(["g"], "r", m, "/x") for m in ("GET", "DELETE", "PROPFIND"))


def test_policy_allows_method_case_sensitive() -> None:
    assert not _policy("/**", methods=("GET",)).allows(["g"], "r", "get", "/x")


def test_policy_allows_other_route_denied() -> None:
    policy = _policy("/**", route="billing")
    assert policy.allows(["g"], "billing", "GET", "/x")
    assert not policy.allows(["g"], "users", "GET", "/x")


def test_policy_allows_unknown_or_no_group_denied() -> None:
    policy = _policy("/**")
    assert not policy.allows(["nope"], "r", "GET", "/x")
    assert not policy.allows([], "r", "GET", "/x")
    assert policy.allows(frozenset({"nope", "g"}), "r", "GET", "/x")


def test_policy_allows_rules_of_several_groups_combined() -> None:
    policy = Policy(
        {
            "read": [{"route": "billing", "methods": ["GET"], "paths": ["/billing/**"]}],
            "write": [{"route": "*", "methods": ["POST"], "paths": ["/billing/invoices"]}],
        }
    )
    groups = ("read", "write")
    assert policy.allows(groups, "billing", "GET", "/billing/x")
    assert policy.allows(groups, "billing", "POST", "/billing/invoices")
    assert not policy.allows(groups, "billing", "POST", "/billing/x")
    assert not policy.allows(("read",), "billing", "POST", "/billing/invoices")
    assert not policy.allows(groups, "billing", "DELETE", "/billing/x")


def test_policy_init_invalid_rules_value_error() -> None:
    with pytest.raises(ValueError, match="group 'g'"):
        Policy({"g": [{"route": "*", "methods": ["get"], "paths": ["/x"]}]})


def test_policy_allows_many_double_stars_no_catastrophic_backtracking() -> None:
    policy = _policy("/**/a/**/a/**/a/**/a/**/b")
    start = time.perf_counter()
    assert not policy.allows(["g"], "r", "GET", "/a" * 4000)
    assert time.perf_counter() - start < 2.0


_GLOB_SEGMENTS = st.sampled_from(["a", "b", "*", "**"])
_PATH_SEGMENTS = st.sampled_from(["a", "b", "ab"])


@settings(max_examples=1000)
@given(
    st.lists(_GLOB_SEGMENTS, max_size=6),
    st.booleans(),
    st.lists(_PATH_SEGMENTS, max_size=7),
    st.booleans(),
)
def test_policy_allows_any_glob_agrees_with_segment_reference(
    glob: list[str], glob_slash: bool, path: list[str], path_slash: bool
) -> None:
    glob_text = "/" + "/".join(glob) + ("/" if glob_slash and glob else "")
    path_text = "/" + "/".join(path) + ("/" if path_slash and path else "")
    expected = _ref_match(glob_text[1:].split("/"), path_text[1:].split("/"))
    assert _policy(glob_text).allows(["g"], "r", "GET", path_text) is expected


@settings(max_examples=1000)
@given(st.lists(_GLOB_SEGMENTS, min_size=1, max_size=6), st.data())
def test_policy_allows_path_built_from_glob_matches(glob: list[str], data: st.DataObject) -> None:
    # Instantiate the glob (each "*" one segment, each "**" zero or more) so
    # that the expected answer is always True: random paths rarely match.
    path: list[str] = []
    for segment in glob:
        if segment == "**":
            path += data.draw(st.lists(_PATH_SEGMENTS, max_size=3))
        else:
            path.append(data.draw(_PATH_SEGMENTS) if segment == "*" else segment)
    glob_text, path_text = "/" + "/".join(glob), "/" + "/".join(path)
    assert _policy(glob_text).allows(["g"], "r", "GET", path_text)


@given(st.lists(_PATH_SEGMENTS, min_size=1, max_size=3), st.lists(_PATH_SEGMENTS, max_size=6))
def test_policy_allows_double_star_rule_never_outside_prefix(
    prefix: list[str], path: list[str]
) -> None:
    prefix_text, path_text = "/" + "/".join(prefix), "/" + "/".join(path)
    allowed = _policy(prefix_text + "/**").allows(["g"], "r", "GET", path_text)
    assert allowed is is_under(path_text, prefix_text)


@given(st.text(alphabet="ab/", min_size=1, max_size=10))
def test_policy_allows_single_star_never_across_slash(rest: str) -> None:
    allowed = _policy("/a/*").allows(["g"], "r", "GET", "/a/" + rest)
    assert allowed is ("/" not in rest)


# --- validate_rules ---------------------------------------------------------

_GOOD = {"route": "billing", "methods": ["GET", "HEAD"], "paths": ["/billing/invoices/**"]}


def test_validate_rules_good_rules_no_errors() -> None:
    rules, errors = validate_rules([_GOOD, {"route": "*", "methods": ["*"], "paths": ["/**"]}])
    assert errors == {}
    assert rules[0] == _GOOD
    assert rules[1] == {"route": "*", "methods": ["*"], "paths": ["/**"]}


def test_validate_rules_paths_and_methods_normalised_copy() -> None:
    rule = {"route": "r", "methods": ["GET", "GET"], "paths": ["/%7Eu//x", "/~u/x", "/é"]}
    rules, errors = validate_rules([rule])
    assert errors == {}
    assert rules == [{"route": "r", "methods": ["GET"], "paths": ["/~u/x", "/%C3%A9"]}]
    assert rule["paths"] == ["/%7Eu//x", "/~u/x", "/é"]


def test_validate_rules_known_route_names_accepted() -> None:
    assert validate_rules([_GOOD], route_names={"billing"})[1] == {}
    assert validate_rules([{**_GOOD, "route": "*"}], route_names=())[1] == {}


@pytest.mark.parametrize(
    ("rules", "field"),
    [
        ({"route": "*"}, "rules"),
        (None, "rules"),
        ([_GOOD] * 101, "rules"),
        (["x"], "rules[0]"),
        ([{**_GOOD, "extra": 1}], "rules[0].extra"),
        ([{"methods": ["GET"], "paths": ["/"]}], "rules[0].route"),
        ([{**_GOOD, "route": "Billing"}], "rules[0].route"),
        ([{**_GOOD, "route": ""}], "rules[0].route"),
        ([{**_GOOD, "route": 3}], "rules[0].route"),
        ([{**_GOOD, "route": "b" * 65}], "rules[0].route"),
        ([{**_GOOD, "methods": []}], "rules[0].methods"),
        ([{**_GOOD, "methods": "GET"}], "rules[0].methods"),
        ([{**_GOOD, "methods": ["get"]}], "rules[0].methods[0]"),
        ([{**_GOOD, "methods": ["GET", "*"]}], "rules[0].methods[1]"),
        ([{**_GOOD, "methods": ["GET\n"]}], "rules[0].methods[0]"),
        ([{**_GOOD, "methods": ["A" * 21]}], "rules[0].methods[0]"),
        ([{**_GOOD, "methods": [None]}], "rules[0].methods[0]"),
        ([{**_GOOD, "paths": []}], "rules[0].paths"),
        ([{**_GOOD, "paths": "/x"}], "rules[0].paths"),
        ([{**_GOOD, "paths": [3]}], "rules[0].paths[0]"),
        ([{**_GOOD, "paths": ["x"]}], "rules[0].paths[0]"),
        ([{**_GOOD, "paths": ["/" + "a" * 1024]}], "rules[0].paths[0]"),
        ([{**_GOOD, "paths": ["/a*b"]}], "rules[0].paths[0]"),
        ([{**_GOOD, "paths": ["/a/***"]}], "rules[0].paths[0]"),
        ([{**_GOOD, "paths": ["/**x"]}], "rules[0].paths[0]"),
        ([{**_GOOD, "paths": ["/a/../b"]}], "rules[0].paths[0]"),
        ([{**_GOOD, "paths": ["/a/./b"]}], "rules[0].paths[0]"),
        ([{**_GOOD, "paths": ["/a/%2E%2e/b"]}], "rules[0].paths[0]"),
        ([{**_GOOD, "paths": ["/a%2Fb"]}], "rules[0].paths[0]"),
        ([{**_GOOD, "paths": ["/a\x00"]}], "rules[0].paths[0]"),
        ([{**_GOOD, "paths": ["/a\nb"]}], "rules[0].paths[0]"),
        ([{**_GOOD, "paths": ["/a\\b"]}], "rules[0].paths[0]"),
        ([{**_GOOD, "paths": ["/%"]}], "rules[0].paths[0]"),
        ([_GOOD, {**_GOOD, "paths": ["/ok", "/..;/x"]}], "rules[1].paths[1]"),
    ],
)
def test_validate_rules_invalid_input_field_error(rules: object, field: str) -> None:
    _, errors = validate_rules(rules)
    assert field in errors, errors


def test_validate_rules_unknown_route_error() -> None:
    _, errors = validate_rules([_GOOD], route_names={"users"})
    assert errors == {"rules[0].route": "unknown route"}


def test_validate_rules_unhashable_methods_reports_error_without_raising() -> None:
    from keygate.gateway.auth.policy import validate_rules

    _, errors = validate_rules([{"route": "*", "methods": [["GET"], {}], "paths": ["/a"]}])
    assert set(errors) == {"rules[0].methods[0]", "rules[0].methods[1]"}
