"""Compile a parsed rule expression into nested closures over a `WafRequest`.

Compilation happens once per rule set load; evaluating a rule is then a few Python calls with
no parsing, no allocation of AST objects and pre-compiled RE2 patterns.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import cast

import re2

from burrow.waf.parse import (
    HEADERS_FIELD,
    BoolField,
    Compare,
    Field,
    Logical,
    Node,
    Not,
    regex_options,
)

Predicate = Callable[["WafRequest"], bool]

_ATTR = {
    "http.host": "host",
    "http.request.uri.path": "path",
    "http.request.uri.query": "query",
    "http.request.uri": "uri",
    "http.request.method": "method",
    "http.user_agent": "user_agent",
}


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


@dataclass(slots=True)
class WafRequest:
    """The request as rules see it: strings, built once per request that has rules to run.

    `uri` is path plus `?query` as sent; header names are lower case and a header that appears
    several times has several values (a comparison holds if it holds for any of them).
    """

    host: str
    path: str
    query: str
    method: str
    ip: str
    headers: list[tuple[bytes, bytes]]
    ssl: bool = False
    user_agent: str = ""
    uri: str = ""
    _ip_obj: ipaddress.IPv4Address | ipaddress.IPv6Address | None = field(default=None)

    @classmethod
    def build(
        cls,
        *,
        host: str,
        target: bytes,
        method: bytes,
        ip: str,
        headers: list[tuple[bytes, bytes]],
        ssl: bool = False,
    ) -> WafRequest:
        path_b, _, query_b = target.partition(b"?")
        ua = b""
        for name, value in headers:
            if name == b"user-agent":
                ua = value
                break
        return cls(
            host=host,
            path=_text(path_b),
            query=_text(query_b),
            method=_text(method),
            ip=ip,
            headers=headers,
            ssl=ssl,
            user_agent=_text(ua),
            uri=_text(target),
        )

    def header_values(self, name: bytes) -> list[str]:
        return [_text(v) for n, v in self.headers if n == name]

    def ip_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        if self._ip_obj is None:
            try:
                self._ip_obj = ipaddress.ip_address(self.ip)
            except ValueError:
                return None
        return self._ip_obj


def _string_test(op: str, value: object) -> Callable[[str], bool]:
    if op == "in":
        members = frozenset(str(v) for v in cast(tuple[object, ...], value))
        return members.__contains__
    text = str(value)
    if op == "eq":
        return lambda s: s == text
    if op == "contains":
        return lambda s: text in s
    if op == "matches":
        search = re2.compile(text, regex_options()).search
        return lambda s: search(s) is not None
    raise AssertionError(op)


def _compile_string(node: Compare) -> Predicate:
    f: Field = node.field
    negate = node.op == "ne"
    test = _string_test("eq" if negate else node.op, node.value)
    func = {"lower": str.lower, "upper": str.upper}.get(f.func or "")
    if f.name == HEADERS_FIELD:
        key = (f.key or "").encode("latin-1", "replace")

        def on_header(r: WafRequest) -> bool:
            for value in r.header_values(key):
                if test(func(value) if func else value):
                    return not negate
            return negate

        return on_header
    get = attrgetter(_ATTR[f.name])
    if func is None:
        if negate:
            return lambda r: not test(get(r))
        return lambda r: test(get(r))
    if negate:
        return lambda r: not test(func(get(r)))
    return lambda r: test(func(get(r)))


_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _compile_ip(node: Compare) -> Predicate:
    value = node.value
    nets = cast(tuple[_Net, ...], value) if isinstance(value, tuple) else (cast(_Net, value),)
    negate = node.op == "ne"

    def on_ip(r: WafRequest) -> bool:
        addr = r.ip_address()
        hit = addr is not None and any(addr.version == n.version and addr in n for n in nets)
        return hit != negate

    return on_ip


def compile_node(node: Node) -> Predicate:
    if isinstance(node, Compare):
        return _compile_ip(node) if node.field.is_ip else _compile_string(node)
    if isinstance(node, BoolField):
        return lambda r: r.ssl
    if isinstance(node, Not):
        inner = compile_node(node.operand)
        return lambda r: not inner(r)
    if isinstance(node, Logical):
        parts = tuple(compile_node(o) for o in node.operands)
        if node.op == "and":
            return lambda r: all(p(r) for p in parts)
        if node.op == "or":
            return lambda r: any(p(r) for p in parts)

        def xor(r: WafRequest) -> bool:
            acc = False
            for p in parts:
                acc ^= p(r)
            return acc

        return xor
    raise AssertionError(node)
