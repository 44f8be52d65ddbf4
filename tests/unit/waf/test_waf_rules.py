"""WAF custom rules: parser errors with positions, evaluation semantics, rule sets, reload,
and hypothesis fuzzing of the parser (bounded)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from burrow.errors import ConfigError
from burrow.waf import RuleSyntaxError, WafEngine, WafRequest, parse, parse_rules
from burrow.waf.compile import compile_node
from burrow.waf.parse import MAX_DEPTH, BoolField, Compare, Logical, Node, Not


def req(
    *,
    host: str = "app.example.com",
    target: bytes = b"/",
    method: bytes = b"GET",
    ip: str = "198.51.100.7",
    headers: list[tuple[bytes, bytes]] | None = None,
    ssl: bool = False,
) -> WafRequest:
    return WafRequest.build(
        host=host, target=target, method=method, ip=ip, headers=headers or [], ssl=ssl
    )


def holds(expression: str, request: WafRequest) -> bool:
    return compile_node(parse(expression))(request)


# --- evaluation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('http.host eq "app.example.com"', True),
        ('http.host == "other.example.com"', False),
        ('http.host ne "other.example.com"', True),
        ('http.request.uri.path eq "/admin/users"', True),
        ('http.request.uri.path contains "/admin"', True),
        ('http.request.uri.path contains "?"', False),
        ('http.request.uri.query eq "a=1&b=2"', True),
        ('http.request.uri eq "/admin/users?a=1&b=2"', True),
        ('http.request.uri.query matches "(^|&)b=[0-9]+"', True),
        ('http.request.uri.path ~ "^/ADMIN"', False),
        ('lower(http.request.uri.path) matches "^/admin"', True),
        ('upper(http.request.method) eq "POST"', True),
        ('http.request.method in {"GET" "HEAD"}', False),
        ('http.request.method in {"GET" "POST"}', True),
        ('http.user_agent contains "curl"', True),
        ('http.request.headers["X-Debug"] eq "1"', True),
        ('http.request.headers["x-debug"] eq "2"', True),  # any of the values
        ('http.request.headers["x-debug"] ne "3"', True),
        ('http.request.headers["x-debug"] ne "2"', False),
        ('http.request.headers["x-missing"] eq ""', False),
        ('http.request.headers["x-missing"] ne "x"', True),
        ("ip.src eq 198.51.100.7", True),
        ("ip.src ne 198.51.100.7", False),
        ("ip.src in {10.0.0.0/8 198.51.100.0/24}", True),
        ("ip.src in {10.0.0.0/8 ::1}", False),
        ("not ip.src in {10.0.0.0/8}", True),
        ("ssl", False),
        ("not ssl", True),
        ('http.host eq "x" or http.request.method eq "POST"', True),
        ('http.host eq "x" || http.request.method eq "POST" && ssl', False),
        ('(http.host eq "x" || http.request.method eq "POST") && !ssl', True),
        ('http.request.method eq "POST" xor ssl', True),
        ('http.request.method eq "POST" ^^ not ssl', False),
        ('http.host eq r"app.example.com"', True),
        ('http.request.uri.path matches r#"^/a.*n/"#', True),
    ],
)
def test_evaluation(expression: str, expected: bool) -> None:
    request = req(
        target=b"/admin/users?a=1&b=2",
        method=b"POST",
        headers=[
            (b"user-agent", b"curl/8.5"),
            (b"x-debug", b"1"),
            (b"x-debug", b"2"),
        ],
    )
    assert holds(expression, request) is expected


def test_ipv6_source_and_ssl() -> None:
    request = req(ip="2001:db8::5", ssl=True)
    assert holds("ip.src in {2001:db8::/32}", request)
    assert not holds("ip.src in {198.51.100.0/24}", request)
    assert holds("ssl and ip.src eq 2001:db8::5", request)


def test_string_escapes() -> None:
    assert holds(
        r'http.user_agent eq "a \"quoted\" \\ agent"',
        req(headers=[(b"user-agent", b'a "quoted" \\ agent')]),
    )


# --- errors with positions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "position", "fragment"),
    [
        ('http.host eq "a" and', 20, "expected a field"),
        ('http.hots eq "a"', 0, "unknown field 'http.hots'"),
        ("http.host eq", 12, "expected a string"),
        ('http.host eq "a" "b"', 17, "expected 'and', 'or'"),
        ('http.host lt "a"', 10, "expected a comparison operator"),
        ('http.host matches "("', 18, "invalid regular expression"),
        ('ip.src contains "1.2.3.4"', 7, "does not apply to an IP field"),
        ("ip.src eq 300.1.1.1", 10, "invalid IP address"),
        ('ip.src in {"a"}', 11, "expected an IP address"),
        ("http.host in {}", 14, "empty set"),
        ('http.host in {"a" 1}', 18, "unexpected character"),
        ('(http.host eq "a"', 17, "expected ')'"),
        ('http.host eq "abc', 13, "unterminated string"),
        (r'http.host eq "a\n"', 15, "invalid escape"),
        ('http.request.headers[name] eq "x"', 21, "header name in quotes"),
        ('lower(ip.src) eq "x"', 6, "lower() takes a string field"),
        ('http.host eq "a" @', 17, "unexpected character '@'"),
        ("", 0, "empty expression"),
        ("ssl eq", 4, "expected 'and', 'or'"),
    ],
)
def test_syntax_errors_carry_a_position(expression: str, position: int, fragment: str) -> None:
    with pytest.raises(RuleSyntaxError) as info:
        parse(expression)
    assert info.value.position == position, str(info.value)
    assert fragment in str(info.value)
    assert f"at position {position + 1}" in str(info.value)


def test_nesting_and_length_are_bounded() -> None:
    deep = "(" * (MAX_DEPTH + 1) + "ssl" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(RuleSyntaxError, match="nested deeper"):
        parse(deep)
    assert parse("(" * (MAX_DEPTH - 1) + "ssl" + ")" * (MAX_DEPTH - 1)) == BoolField("ssl")
    with pytest.raises(RuleSyntaxError, match="longer than"):
        parse('http.host eq "' + "a" * 5000 + '"')


# --- rule sets -----------------------------------------------------------------------------


def test_ruleset_order_actions_and_hostnames() -> None:
    ruleset = parse_rules(
        {
            "rules": [
                {"id": "trusted", "expression": "ip.src in {10.0.0.0/8}", "action": "skip"},
                {"id": "watch", "expression": 'http.user_agent contains "bot"', "action": "log"},
                {
                    "id": "admin",
                    "expression": 'http.request.uri.path contains "/admin"',
                    "action": "block",
                },
                {
                    "id": "only-api",
                    "expression": 'http.request.method eq "DELETE"',
                    "action": "block",
                    "hostnames": ["API.example.com."],
                },
                {"id": "off", "expression": "ssl", "action": "block", "enabled": False},
            ]
        }
    )
    assert [r.id for r in ruleset.rules] == ["trusted", "watch", "admin", "only-api"]

    def verdict(**kw: object) -> tuple[str | None, list[str]]:
        r = req(**kw)  # type: ignore[arg-type]
        v = ruleset.evaluate(ruleset.for_host(r.host), r)
        return (v.blocked_by.id if v.blocked_by else None, [x.id for x in v.logged])

    assert verdict(target=b"/admin") == ("admin", [])
    assert verdict(target=b"/admin", ip="10.1.2.3") == (None, [])  # skip wins
    assert verdict(target=b"/", headers=[(b"user-agent", b"a bot")]) == (None, ["watch"])
    assert verdict(target=b"/admin", headers=[(b"user-agent", b"bot")]) == ("admin", ["watch"])
    assert verdict(method=b"DELETE") == (None, [])
    assert verdict(method=b"DELETE", host="api.example.com") == ("only-api", [])
    assert verdict(ssl=True) == (None, [])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"rules": [{"expression": "ssl", "action": "deny"}]}, "unknown action 'deny'"),
        ({"rules": [{"action": "block"}]}, "'expression' must be a string"),
        ({"rules": [{"expression": "ssl eq", "action": "block"}]}, "rule 1 (rule-1)"),
        ({"rules": [{"id": "a", "expression": "ssl", "action": "log"}] * 2}, "duplicate id"),
        ({"rules": [{"expression": "ssl", "action": "log", "hostname": "x"}]}, "unknown keys"),
        ({"rulez": []}, "unknown keys rulez"),
        ({"rules": "ssl"}, "expected a list"),
    ],
)
def test_ruleset_errors(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(data)
    assert message in str(info.value)


def test_engine_reloads_changed_file_and_keeps_old_rules_on_error(tmp_path: Path) -> None:
    path = tmp_path / "waf.yaml"
    path.write_text("rules:\n  - {expression: 'http.request.uri.path eq \"/a\"', action: block}\n")
    engine = WafEngine.from_file(path)
    kw = dict(host="h", method=b"GET", ip="127.0.0.1", headers=[], ssl=False, ray="r")
    assert engine.check(target=b"/a", **kw) is not None  # type: ignore[arg-type]
    assert engine.maybe_reload() is False  # unchanged
    path.write_text("rules:\n  - {expression: 'http.request.uri.path eq \"/bb\"', action: block}\n")
    assert engine.maybe_reload() is True
    assert engine.check(target=b"/a", **kw) is None  # type: ignore[arg-type]
    assert engine.check(target=b"/bb", **kw) is not None  # type: ignore[arg-type]
    path.write_text("rules:\n  - {expression: 'http.request.uri.path eq', action: block}\n")
    assert engine.maybe_reload() is False  # broken: the previous set stays
    assert engine.check(target=b"/bb", **kw) is not None  # type: ignore[arg-type]
    assert engine.blocked == 3


# --- fuzzing (bounded) ---------------------------------------------------------------------

_ALPHABET = st.sampled_from(
    [
        *'http.hostrequesturipathqueymdagnsc_[]{}()"\\!=~&|^ \t01289/:#,r',
        *["eq", "ne", "in", "and", "or", "not", "contains", "matches", "ip.src", "http.host"],
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ALPHABET, max_size=40).map("".join) | st.text(max_size=60))
def test_fuzz_parser_only_raises_syntax_errors(text: str) -> None:
    try:
        node = parse(text)
    except RuleSyntaxError as exc:
        assert 0 <= exc.position <= len(text)
        return
    compile_node(node)(req())  # whatever parses also compiles and evaluates


_STRING_FIELDS = [
    "http.host",
    "http.request.uri.path",
    "http.request.uri.query",
    "http.request.method",
    "http.user_agent",
]
_WORDS = st.sampled_from(["", "a", "GET", "/x", "b=1", "app", "bot", 'q"t', "\\"])


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def _compare(draw: st.DrawFn) -> tuple[str, Node]:
    if draw(st.booleans()):
        field = draw(st.sampled_from(_STRING_FIELDS))
        op = draw(st.sampled_from(["eq", "ne", "contains", "in"]))
        if op == "in":
            words = tuple(draw(st.lists(_WORDS, min_size=1, max_size=3)))
            return f"{field} in {{{' '.join(map(_quote, words))}}}", ("cmp", field, op, words)  # type: ignore[return-value]
        word = draw(_WORDS)
        return f"{field} {op} {_quote(word)}", ("cmp", field, op, word)  # type: ignore[return-value]
    net = draw(st.sampled_from(["10.0.0.0/8", "198.51.100.7", "::1", "2001:db8::/32"]))
    return f"ip.src in {{{net}}}", ("ip", net)  # type: ignore[return-value]


def _exprs() -> st.SearchStrategy[tuple[str, object]]:
    return st.recursive(
        _compare(),
        lambda inner: st.one_of(
            inner.map(lambda t: (f"not ({t[0]})", ("not", t[1]))),
            st.tuples(st.sampled_from(["and", "or", "xor"]), inner, inner).map(
                lambda t: (f"({t[1][0]}) {t[0]} ({t[2][0]})", (t[0], t[1][1], t[2][1]))
            ),
        ),
        max_leaves=8,
    )


def _reference(tree: object, r: WafRequest) -> bool:
    """An independent, naive evaluator for the generated trees."""
    kind = tree[0]  # type: ignore[index]
    if kind == "not":
        return not _reference(tree[1], r)  # type: ignore[index]
    if kind in ("and", "or", "xor"):
        a, b = _reference(tree[1], r), _reference(tree[2], r)  # type: ignore[index]
        return {"and": a and b, "or": a or b, "xor": a != b}[kind]
    if kind == "ip":
        net = ipaddress.ip_network(tree[1], strict=False)  # type: ignore[index]
        addr = ipaddress.ip_address(r.ip)
        return addr.version == net.version and addr in net
    _, field, op, value = tree  # type: ignore[misc]
    actual = {
        "http.host": r.host,
        "http.request.uri.path": r.path,
        "http.request.uri.query": r.query,
        "http.request.method": r.method,
        "http.user_agent": r.user_agent,
    }[field]
    if op == "eq":
        return actual == value
    if op == "ne":
        return actual != value
    if op == "contains":
        return value in actual
    return actual in value


@settings(max_examples=300, deadline=None)
@given(
    _exprs(),
    st.sampled_from(["app", "a", "bot"]),
    st.sampled_from([b"/x?b=1", b"/", b"/a?q"]),
    st.sampled_from([b"GET", b"a"]),
    st.sampled_from(["10.1.1.1", "198.51.100.7", "::1", "2001:db8::9"]),
    st.sampled_from([b"bot", b'q"t', b""]),
)
def test_fuzz_compiled_rules_agree_with_reference(
    expr: tuple[str, object], host: str, target: bytes, method: bytes, ip: str, ua: bytes
) -> None:
    text, tree = expr
    r = req(host=host, target=target, method=method, ip=ip, headers=[(b"user-agent", ua)])
    assert holds(text, r) is _reference(tree, r), text


def test_ast_shapes() -> None:
    node = parse('not http.host eq "a" and ssl or ip.src eq 1.2.3.4')
    assert isinstance(node, Logical) and node.op == "or"
    left = node.operands[0]
    assert isinstance(left, Logical) and left.op == "and"
    assert isinstance(left.operands[0], Not)
    assert isinstance(node.operands[1], Compare)
