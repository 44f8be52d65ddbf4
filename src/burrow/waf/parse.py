"""Parser for a subset of Cloudflare's rules language (the Wireshark-like filter syntax).

    http.request.uri.path contains "/admin" and not ip.src in {10.0.0.0/8 192.0.2.1}
    lower(http.user_agent) matches "(curl|wget)" or http.request.headers["x-debug"] eq "1"

Supported: fields `http.host`, `http.request.uri.path`, `http.request.uri.query`,
`http.request.uri`, `http.request.method`, `http.user_agent`, `http.request.headers["name"]`,
`ip.src`, `ssl` (boolean); the function `lower(...)`/`upper(...)` on string fields; comparison
operators `eq`/`==`, `ne`/`!=`, `contains`, `matches`/`~` (RE2 syntax), `in {...}`; logical
`not`/`!`, `and`/`&&`, `xor`/`^^`, `or`/`||` (that precedence, as in Cloudflare) and
parentheses. Strings are `"..."` with `\\"` and `\\\\` escapes, or raw `r"..."` / `r#"..."#`.

The parser produces a small immutable AST, checked for types; every error carries the 0-based
character offset where it was detected, so an operator sees where a rule is wrong.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final, TypeAlias

import re2

from burrow.errors import ConfigError

MAX_EXPRESSION_LENGTH: Final = 4096  # Cloudflare's limit for a rule expression
MAX_DEPTH: Final = 64  # nesting of parentheses/not; keeps recursion bounded

STRING_FIELDS: Final = frozenset(
    {
        "http.host",
        "http.request.uri.path",
        "http.request.uri.query",
        "http.request.uri",
        "http.request.method",
        "http.user_agent",
    }
)
HEADERS_FIELD: Final = "http.request.headers"
IP_FIELDS: Final = frozenset({"ip.src"})
BOOL_FIELDS: Final = frozenset({"ssl"})
FUNCTIONS: Final = frozenset({"lower", "upper"})


class RuleSyntaxError(ConfigError):
    """A malformed rule expression; `position` is the 0-based offset of the offending text."""

    def __init__(self, message: str, position: int, expression: str = "") -> None:
        self.message = message
        self.position = position
        self.expression = expression
        super().__init__(self._render())

    @property
    def column(self) -> int:
        return self.position + 1

    def _render(self) -> str:
        text = f"{self.message} at position {self.column}"
        if self.expression and "\n" not in self.expression and len(self.expression) <= 200:
            text += f"\n  {self.expression}\n  {' ' * self.position}^"
        return text


# --- AST ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    name: str  # one of the fields above; for headers HEADERS_FIELD
    key: str | None = None  # header name (lower case) for http.request.headers["..."]
    func: str | None = None  # "lower" / "upper" applied to the value

    @property
    def is_ip(self) -> bool:
        return self.name in IP_FIELDS


@dataclass(frozen=True, slots=True)
class Compare:
    field: Field
    op: str  # eq ne contains matches in
    value: str | ipaddress.IPv4Network | ipaddress.IPv6Network | tuple[object, ...]
    position: int = 0


@dataclass(frozen=True, slots=True)
class BoolField:
    name: str


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class Logical:
    op: str  # and or xor
    operands: tuple[Node, ...]


Node: TypeAlias = Compare | BoolField | Not | Logical

# --- lexer -------------------------------------------------------------------------------------

_IP_RE: Final = re.compile(
    r"(?:\d{1,3}(?:\.\d{1,3}){3}|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f.]*)(?:/\d{1,3})?"
)
_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_SYMBOLS: Final = ("==", "!=", "&&", "||", "^^", "(", ")", "{", "}", "[", "]", ",", "!", "~")
_WORD_OPS: Final = {"eq", "ne", "contains", "matches", "in", "and", "or", "xor", "not"}
_OP_ALIASES: Final = {
    "==": "eq",
    "!=": "ne",
    "~": "matches",
    "&&": "and",
    "||": "or",
    "^^": "xor",
    "!": "not",
}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # ident, op, string, ip, sym, end
    text: str
    pos: int


def tokenize(src: str) -> list[Token]:
    out: list[Token] = []
    i = 0
    n = len(src)
    while i < n:
        c = src[i]
        if c in " \t\r\n":
            i += 1
            continue
        if c == '"':
            value, i2 = _read_string(src, i)
            out.append(Token("string", value, i))
            i = i2
            continue
        if c == "r" and i + 1 < n and src[i + 1] in '"#':
            value, i2 = _read_raw(src, i)
            out.append(Token("string", value, i))
            i = i2
            continue
        m = _IP_RE.match(src, i)
        if m is not None and (c.isdigit() or c == ":" or m.group().count(":") >= 2):
            out.append(Token("ip", m.group(), i))
            i = m.end()
            continue
        m = _IDENT_RE.match(src, i)
        if m is not None:
            word = m.group()
            kind = "op" if word in _WORD_OPS else "ident"
            out.append(Token(kind, word, i))
            i = m.end()
            continue
        for sym in _SYMBOLS:
            if src.startswith(sym, i):
                alias = _OP_ALIASES.get(sym)
                out.append(Token("op" if alias else "sym", alias or sym, i))
                i += len(sym)
                break
        else:
            raise RuleSyntaxError(f"unexpected character {c!r}", i, src)
    out.append(Token("end", "", n))
    return out


def _read_string(src: str, start: int) -> tuple[str, int]:
    i = start + 1
    parts: list[str] = []
    while i < len(src):
        c = src[i]
        if c == '"':
            return "".join(parts), i + 1
        if c == "\\":
            if i + 1 >= len(src) or src[i + 1] not in '"\\':
                raise RuleSyntaxError('invalid escape (only \\" and \\\\)', i, src)
            parts.append(src[i + 1])
            i += 2
            continue
        parts.append(c)
        i += 1
    raise RuleSyntaxError("unterminated string", start, src)


def _read_raw(src: str, start: int) -> tuple[str, int]:
    i = start + 1
    hashes = 0
    while i < len(src) and src[i] == "#":
        hashes += 1
        i += 1
    if i >= len(src) or src[i] != '"':
        raise RuleSyntaxError("invalid raw string", start, src)
    close = '"' + "#" * hashes
    end = src.find(close, i + 1)
    if end == -1:
        raise RuleSyntaxError("unterminated raw string", start, src)
    return src[i + 1 : end], end + len(close)


# --- parser ------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.tokens = tokenize(src)
        self.i = 0
        self.depth = 0

    def error(self, message: str, tok: Token | None = None) -> RuleSyntaxError:
        tok = tok or self.peek()
        return RuleSyntaxError(message, tok.pos, self.src)

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def is_op(self, *names: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.text in names

    def expect_sym(self, sym: str) -> Token:
        tok = self.peek()
        if tok.kind != "sym" or tok.text != sym:
            raise self.error(f"expected {sym!r}, found {_describe(tok)}")
        return self.take()

    def parse(self) -> Node:
        node = self.parse_binary(0)
        tok = self.peek()
        if tok.kind != "end":
            raise self.error(f"expected 'and', 'or' or the end, found {_describe(tok)}")
        return node

    _LEVELS: Final = ("or", "xor", "and")

    def parse_binary(self, level: int) -> Node:
        if level == len(self._LEVELS):
            return self.parse_unary()
        op = self._LEVELS[level]
        operands = [self.parse_binary(level + 1)]
        while self.is_op(op):
            self.take()
            operands.append(self.parse_binary(level + 1))
        return operands[0] if len(operands) == 1 else Logical(op, tuple(operands))

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression nested deeper than {MAX_DEPTH}")

    def parse_unary(self) -> Node:
        if self.is_op("not"):
            self.take()
            self.enter()
            node: Node = Not(self.parse_unary())
            self.depth -= 1
            return node
        tok = self.peek()
        if tok.kind == "sym" and tok.text == "(":
            self.take()
            self.enter()
            node = self.parse_binary(0)
            self.depth -= 1
            self.expect_sym(")")
            return node
        return self.parse_comparison()

    def parse_field(self) -> tuple[Field | BoolField, Token]:
        tok = self.peek()
        if tok.kind != "ident":
            raise self.error(f"expected a field, found {_describe(tok)}")
        self.take()
        name = tok.text
        if name in FUNCTIONS:
            self.expect_sym("(")
            inner, inner_tok = self.parse_field()
            if not isinstance(inner, Field) or inner.is_ip or inner.func is not None:
                raise self.error(f"{name}() takes a string field", inner_tok)
            self.expect_sym(")")
            return Field(inner.name, inner.key, name), tok
        if name == HEADERS_FIELD:
            self.expect_sym("[")
            key = self.peek()
            if key.kind != "string":
                raise self.error("expected a header name in quotes")
            self.take()
            self.expect_sym("]")
            return Field(HEADERS_FIELD, key.text.lower()), tok
        if name in STRING_FIELDS or name in IP_FIELDS:
            return Field(name), tok
        if name in BOOL_FIELDS:
            return BoolField(name), tok
        raise self.error(f"unknown field {name!r}", tok)

    def parse_comparison(self) -> Node:
        field, _ftok = self.parse_field()
        if isinstance(field, BoolField):
            return field
        op_tok = self.peek()
        if op_tok.kind != "op" or op_tok.text not in ("eq", "ne", "contains", "matches", "in"):
            raise self.error(f"expected a comparison operator, found {_describe(op_tok)}")
        self.take()
        op = op_tok.text
        if field.is_ip:
            if op in ("contains", "matches"):
                raise self.error(f"{op!r} does not apply to an IP field", op_tok)
            if op == "in":
                return Compare(field, op, self.parse_set(ip=True), op_tok.pos)
            value_tok = self.peek()
            return Compare(field, op, self.parse_ip(), value_tok.pos)
        if op == "in":
            return Compare(field, op, self.parse_set(ip=False), op_tok.pos)
        value_tok = self.peek()
        if value_tok.kind != "string":
            raise self.error(f"expected a string, found {_describe(value_tok)}")
        self.take()
        if op == "matches":
            _check_regex(value_tok.text, value_tok.pos, self.src)
        return Compare(field, op, value_tok.text, value_tok.pos)

    def parse_ip(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        tok = self.peek()
        if tok.kind not in ("ip", "ident"):
            raise self.error(f"expected an IP address or CIDR range, found {_describe(tok)}")
        self.take()
        try:
            return ipaddress.ip_network(tok.text, strict=False)
        except ValueError:
            raise self.error(f"invalid IP address or range {tok.text!r}", tok) from None

    def parse_set(self, *, ip: bool) -> tuple[object, ...]:
        self.expect_sym("{")
        items: list[object] = []
        while True:
            tok = self.peek()
            if tok.kind == "sym" and tok.text == "}":
                self.take()
                break
            if ip:
                items.append(self.parse_ip())
            elif tok.kind == "string":
                self.take()
                items.append(tok.text)
            else:
                raise self.error(f"expected a string or '}}', found {_describe(tok)}")
        if not items:
            raise self.error("empty set", tok)
        return tuple(items)


def _describe(tok: Token) -> str:
    if tok.kind == "end":
        return "the end of the expression"
    if tok.kind == "string":
        return "a string"
    return repr(tok.text)


def regex_options() -> re2.Options:
    """RE2 options for rule patterns: quiet (errors are ours to report), bounded memory."""
    options = re2.Options()
    options.log_errors = False
    options.max_mem = 8 << 20
    return options


def _check_regex(pattern: str, pos: int, src: str) -> None:
    try:
        re2.compile(pattern, regex_options())
    except Exception as exc:  # re2.error, and TypeError/ValueError for odd input
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise RuleSyntaxError(f"invalid regular expression: {detail}", pos, src) from None


def parse(expression: str) -> Node:
    """Parse and type-check one rule expression; raises RuleSyntaxError with a position."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise RuleSyntaxError(
            f"expression longer than {MAX_EXPRESSION_LENGTH} characters", MAX_EXPRESSION_LENGTH
        )
    if not expression.strip():
        raise RuleSyntaxError("empty expression", 0, expression)
    return _Parser(expression).parse()
