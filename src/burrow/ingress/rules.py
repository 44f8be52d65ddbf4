"""cloudflared-compatible ingress rules: validation (same checks, same order, same messages) and
matching (first rule whose hostname and path both match; the last rule catches everything).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import idna
import re2

from burrow.errors import ConfigError
from burrow.ingress.config import (
    DEFAULT_ORIGIN_REQUEST,
    OriginRequest,
    UnvalidatedRule,
    decode_rules,
    ip_rule_from_raw,
    origin_request_from_config,
)

# --------------------------------------------------------------------------- services


@dataclass(frozen=True, slots=True)
class HTTPService:
    """An HTTP(S) or WebSocket origin; `url` is scheme://host[:port] as written (scheme lowered)."""

    url: str
    scheme: str  # http, https, ws, wss
    host: str  # without brackets for IPv6
    port: int  # explicit, else 80 (http/ws) or 443 (https/wss)

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True, slots=True)
class UnixService:
    path: str
    tls: bool = False

    def __str__(self) -> str:
        return f"unix{'+tls' if self.tls else ''}:{self.path}"


@dataclass(frozen=True, slots=True)
class StatusService:
    code: int

    def __str__(self) -> str:
        return f"http_status:{self.code}"


@dataclass(frozen=True, slots=True)
class HelloWorldService:
    def __str__(self) -> str:
        return "hello_world"


@dataclass(frozen=True, slots=True)
class StreamService:
    """TCP carried over WebSocket (tcp/ssh/rdp/smb/any other scheme). cloudflared fills in a
    default port for ssh (22), rdp (3389), smb (445) and tcp (7864); others may have none."""

    scheme: str
    host: str
    port: int | None

    @property
    def dest(self) -> str:
        if self.port is None:
            return self.host
        return _join_host_port(self.host, str(self.port))

    def __str__(self) -> str:
        return f"{self.scheme}://{self.dest}"


@dataclass(frozen=True, slots=True)
class BastionService:
    def __str__(self) -> str:
        return "bastion"


@dataclass(frozen=True, slots=True)
class SocksProxyService:
    ip_rules: tuple[Any, ...] = ()

    def __str__(self) -> str:
        return "socks-proxy"


Service = (
    HTTPService
    | UnixService
    | StatusService
    | HelloWorldService
    | StreamService
    | BastionService
    | SocksProxyService
)

_STREAM_DEFAULT_PORTS = {"ssh": 22, "rdp": 3389, "smb": 445, "tcp": 7864}
_HTTP_SCHEMES = {"http": 80, "ws": 80, "https": 443, "wss": 443}

# --------------------------------------------------------------------------- Go's net/url, net


class _URLError(ValueError):
    pass


@dataclass(slots=True)
class GoURL:
    """The parts of a URL as Go's `net/url.Parse` returns them."""

    scheme: str = ""
    opaque: str = ""
    userinfo: str | None = None
    host: str = ""
    path: str = ""
    raw_query: str = ""
    fragment: str = ""

    @property
    def hostname(self) -> str:
        host, _ = _url_split_host_port(self.host)
        return host

    @property
    def port(self) -> str:
        return _url_split_host_port(self.host)[1]


def _url_split_host_port(host_port: str) -> tuple[str, str]:
    host, port = host_port, ""
    colon = host.rfind(":")
    if colon != -1 and _valid_optional_port(host[colon:]):
        host, port = host[:colon], host[colon + 1 :]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def _valid_optional_port(port: str) -> bool:
    if port == "":
        return True
    return port[0] == ":" and all("0" <= c <= "9" for c in port[1:])


_HEX = set("0123456789abcdefABCDEF")
_HOST_OK = set("!$&'()*+,;=:[]<>\"-_.~")


def _unescape(s: str, host: bool) -> str:
    if "%" not in s:
        if host:
            for ch in s:
                if ord(ch) < 0x80 and not ch.isalnum() and ch not in _HOST_OK:
                    raise _URLError(f"invalid character {_quote(ch)} in host name")
        return s
    out = bytearray()
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "%":
            esc = s[i : i + 3]
            if len(esc) < 3 or esc[1] not in _HEX or esc[2] not in _HEX:
                raise _URLError(f"invalid URL escape {_quote(esc)}")
            if host and int(esc[1], 16) < 8 and esc != "%25":
                raise _URLError(f"invalid URL escape {_quote(esc)}")
            out.append(int(esc[1:], 16))
            i += 3
            continue
        if host and ord(ch) < 0x80 and not ch.isalnum() and ch not in _HOST_OK:
            raise _URLError(f"invalid character {_quote(ch)} in host name")
        out += ch.encode("utf-8", "surrogateescape")
        i += 1
    return out.decode("utf-8", "surrogateescape")


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def go_url_parse(raw: str) -> GoURL:
    """Go's `url.Parse`; raises ValueError with Go's message (`parse "X": ...`)."""
    try:
        return _parse_url(raw)
    except _URLError as exc:
        raise ValueError(f"parse {_quote(raw)}: {exc}") from None


def _parse_url(raw: str) -> GoURL:
    u = GoURL()
    rest, sep, frag = raw.partition("#")
    if sep:
        u.fragment = frag
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in rest):
        raise _URLError("net/url: invalid control character in URL")
    if rest == "*":
        u.path = "*"
        return u
    for i, ch in enumerate(rest):
        if ch.isascii() and ch.isalpha():
            continue
        if ch.isascii() and (ch.isdigit() or ch in "+-."):
            if i == 0:
                break
            continue
        if ch == ":":
            if i == 0:
                raise _URLError("missing protocol scheme")
            u.scheme, rest = rest[:i].lower(), rest[i + 1 :]
        break
    if rest.endswith("?") and rest.count("?") == 1:
        rest = rest[:-1]
    else:
        rest, _, u.raw_query = rest.partition("?")
    if not rest.startswith("/"):
        if u.scheme:
            u.opaque = rest
            return u
        if ":" in rest.partition("/")[0]:
            raise _URLError("first path segment in URL cannot contain colon")
    if (u.scheme or not rest.startswith("///")) and rest.startswith("//"):
        authority, slash, tail = rest[2:].partition("/")
        rest = slash + tail
        at = authority.rfind("@")
        if at >= 0:
            u.userinfo, authority = authority[:at], authority[at + 1 :]
        u.host = _parse_host(authority)
    u.path = _unescape(rest, host=False)
    return u


def _parse_host(host: str) -> str:
    if host.startswith("["):
        end = host.rfind("]")
        if end < 0:
            raise _URLError("missing ']' in host")
        colon_port = host[end + 1 :]
        if not _valid_optional_port(colon_port):
            raise _URLError(f"invalid port {_quote(colon_port)} after host")
    else:
        colon = host.rfind(":")
        if colon != -1 and not _valid_optional_port(host[colon:]):
            raise _URLError(f"invalid port {_quote(host[colon:])} after host")
    return _unescape(host, host=True)


def split_host_port(host_port: str) -> tuple[str, str] | None:
    """Go's `net.SplitHostPort`; None where Go returns an error."""
    i = host_port.rfind(":")
    if i < 0:
        return None
    j = k = 0
    if host_port.startswith("["):
        end = host_port.find("]")
        if end < 0 or end + 1 != i:
            return None
        host = host_port[1:end]
        j, k = 1, end + 1
    else:
        host = host_port[:i]
        if ":" in host:
            return None
    if "[" in host_port[j:] or "]" in host_port[k:]:
        return None
    return host, host_port[i + 1 :]


def _join_host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _atoi(text: str) -> int:
    """Go's strconv.Atoi, raising ValueError with its message."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not all("0" <= c <= "9" for c in digits):
        raise ValueError(f'strconv.Atoi: parsing "{text}": invalid syntax')
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f'strconv.Atoi: parsing "{text}": value out of range')
    return value


# --------------------------------------------------------------------------- regexps (Go syntax)

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False

# RE2's C++ error texts -> Go regexp/syntax's
_RE2_TO_GO = (
    ("invalid perl operator", "invalid or unsupported Perl syntax"),
    ("missing )", "missing closing )"),
    ("missing ]", "missing closing ]"),
    ("unexpected )", "unexpected )"),
    ("bad repetition operator", "invalid nested repetition operator"),
    ("invalid repetition size", "invalid repeat count"),
    ("no argument for repetition operator", "missing argument to repetition operator"),
    ("invalid escape sequence", "invalid escape sequence"),
    ("invalid character class range", "invalid character class range"),
    ("invalid character class", "invalid character class"),
    ("invalid UTF-8", "invalid UTF-8"),
    ("invalid named capture group", "invalid named capture"),
    ("pattern too large", "expression too large"),
    ("bad named capture group", "invalid named capture"),
)


def compile_path(pattern: str) -> Any:
    """Compile a Go (RE2) regexp; ValueError("error parsing regexp: ...") as Go words it."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        raw = exc.args[0] if exc.args else b""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if text.startswith("trailing \\"):
            raise ValueError(
                "error parsing regexp: trailing backslash at end of expression: ``"
            ) from None
        for cpp, go in _RE2_TO_GO:
            if text.startswith(cpp + ": "):
                arg = text[len(cpp) + 2 :]
                raise ValueError(f"error parsing regexp: {go}: `{arg}`") from None
        raise ValueError(f"error parsing regexp: {text}") from None


# --------------------------------------------------------------------------- rules


def _to_punycode(hostname: str) -> str | None:
    try:
        return idna.encode(hostname, uts46=True, std3_rules=True, transitional=False).decode()
    except (idna.IDNAError, UnicodeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Rule:
    hostname: str  # as written; "" or "*" match every host
    path: Any  # compiled re2 pattern (`.pattern` is the source) or None
    service: Service
    origin_request: OriginRequest
    index: int
    punycode_hostname: str = ""  # cloudflared's extra IDNA form, "" when the same or invalid

    def matches(self, host: str, path: str) -> bool:
        """cloudflared's Rule.Matches, with hosts compared case-insensitively."""
        host = host.lower()
        if self.hostname in ("", "*"):
            host_ok = True
        else:
            host_ok = _match_host(self.hostname.lower(), host) or (
                self.punycode_hostname != "" and _match_host(self.punycode_hostname, host)
            )
        return host_ok and (self.path is None or self.path.search(path) is not None)

    def multi_line_string(self) -> str:
        """What `ingress rule` prints under `Matched rule #N`."""
        out = []
        if self.hostname:
            out.append(f"\thostname: {self.hostname}")
        if self.path is not None:
            out.append(f"\tpath: {self.path.pattern}")
        out.append(f"\tservice: {self.service}")
        return "\n".join(out)


def _match_host(rule_host: str, req_host: str) -> bool:
    if rule_host == req_host:
        return True
    return rule_host.startswith("*.") and req_host.endswith(rule_host[1:])


def _parse_service(text: str, cfg: OriginRequest, rule: UnvalidatedRule) -> Service:
    if text.startswith("unix:"):
        return UnixService(path=text[len("unix:") :], tls=False)
    if text.startswith("unix+tls:"):
        return UnixService(path=text[len("unix+tls:") :], tls=True)
    if text.startswith("http_status:"):
        try:
            code = _atoi(text[len("http_status:") :])
        except ValueError as exc:
            raise ConfigError(f"invalid HTTP status code: {exc}") from None
        if code < 100 or code > 999:
            raise ConfigError(f"invalid HTTP status code: {code}")
        return StatusService(code)
    if text in ("hello_world", "hello-world"):
        return HelloWorldService()
    if text == "socks-proxy":
        rules = []
        for raw in rule.origin_request.get("ip_rules", ()):
            try:
                rules.append(ip_rule_from_raw(raw))
            except ValueError as exc:
                raise ConfigError(f"unable to create ip rule for {text}: {exc}") from None
        return SocksProxyService(tuple(rules))
    if text == "bastion" or cfg.bastion_mode:
        return BastionService()
    try:
        u = go_url_parse(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    hostname = u.hostname
    if u.scheme == "" or hostname == "":
        raise ConfigError(
            f"{text} is an invalid address, please make sure it has a scheme and a hostname"
        )
    if u.path != "":
        raise ConfigError(
            f"{text} is an invalid address, ingress rules don't support proxying to a different "
            "path on the origin service. The path will be the same as the eyeball request's path"
        )
    port = u.port
    if u.scheme in _HTTP_SCHEMES:
        url = f"{u.scheme}://" + (f"{u.userinfo}@" if u.userinfo is not None else "") + u.host
        if u.raw_query:
            url += "?" + u.raw_query
        return HTTPService(
            url=url,
            scheme=u.scheme,
            host=hostname,
            port=int(port) if port else _HTTP_SCHEMES[u.scheme],
        )
    default = _STREAM_DEFAULT_PORTS.get(u.scheme)
    return StreamService(scheme=u.scheme, host=hostname, port=int(port) if port else default)


def _validate_hostname(rule: UnvalidatedRule, index: int, total: int) -> None:
    if split_host_port(rule.hostname) is not None:
        raise ConfigError("Hostname cannot contain a port")
    if rule.hostname.rfind("*") > 0:
        raise ConfigError(
            'Hostname patterns can have at most one wildcard character ("*") and it can only be '
            'used for subdomains, e.g. "*.example.com"'
        )
    catch_all = rule.hostname in ("", "*") and rule.path == ""
    last = index == total - 1
    if last and not catch_all:
        raise ConfigError(
            "The last ingress rule must match all URLs (i.e. it should not have a hostname or "
            "path filter)"
        )
    if not last and catch_all:
        raise ConfigError(
            f"Rule #{index + 1} is matching the hostname '{rule.hostname}', but this will match "
            "every hostname, meaning the rules which follow it will never be triggered."
        )


def _validate_rule(raw: UnvalidatedRule, index: int, total: int, defaults: OriginRequest) -> Rule:
    cfg = defaults.merged(raw.origin_request)
    service = _parse_service(raw.service, cfg, raw)
    if isinstance(service, BastionService):
        cfg = cfg.merged({"bastion_mode": True})
    access = raw.origin_request.get("access")
    if access is not None and access.required and access.team_name == "" and access.aud_tag:
        raise ConfigError("access.TeamName cannot be blank when access.audTags are present")
    _validate_hostname(raw, index, total)
    catch_all = raw.hostname in ("", "*") and raw.path == ""
    puny = ""
    if not catch_all:
        converted = _to_punycode(raw.hostname)
        if converted is not None and converted != raw.hostname:
            puny = converted.lower()
    regex = None
    if raw.path != "":
        try:
            regex = compile_path(raw.path)
        except ValueError as exc:
            raise ConfigError(f"Rule #{index + 1} has an invalid regex: {exc}") from None
    return Rule(
        hostname=raw.hostname,
        path=regex,
        service=service,
        origin_request=cfg,
        index=index,
        punycode_hostname=puny,
    )


# A candidate for matching: (rule, wildcard suffixes or None when the host already matched)
_Candidate = tuple[Rule, tuple[str, ...] | None]


@dataclass(frozen=True, slots=True)
class Ingress:
    """Validated rules. `match` is the per-request entry point."""

    rules: tuple[Rule, ...]
    defaults: OriginRequest = DEFAULT_ORIGIN_REQUEST
    _by_host: Mapping[str, tuple[_Candidate, ...]] = field(default_factory=dict, repr=False)
    _others: tuple[_Candidate, ...] = field(default=(), repr=False)

    @classmethod
    def parse(
        cls,
        rules_list: Sequence[UnvalidatedRule | Mapping[str, Any]] | None,
        top_origin_request: OriginRequest | Mapping[str, Any] | None = None,
    ) -> Ingress:
        """Validate ingress rules as cloudflared does (ParseIngress); ConfigError on failure.

        `rules_list` holds `UnvalidatedRule`s (from `load_config_file`) or plain mappings as
        `yaml.safe_load` gives them; `top_origin_request` is the top-level `originRequest` as
        decoded overrides, plain YAML data, or an already built `OriginRequest`.
        """
        if not rules_list:
            raise ConfigError("The config file doesn't contain any ingress rules")
        if all(isinstance(r, UnvalidatedRule) for r in rules_list):
            raw_rules = tuple(r for r in rules_list if isinstance(r, UnvalidatedRule))
        else:
            plain = [_plain_rule(r) for r in rules_list]
            raw_rules, _ = decode_rules(plain)
        if isinstance(top_origin_request, OriginRequest):
            defaults = top_origin_request
        elif top_origin_request is None:
            defaults = DEFAULT_ORIGIN_REQUEST
        elif _is_decoded(top_origin_request):
            defaults = origin_request_from_config(top_origin_request)
        else:
            _, overrides = decode_rules(None, dict(top_origin_request))
            defaults = origin_request_from_config(overrides)
        total = len(raw_rules)
        rules = tuple(_validate_rule(r, i, total, defaults) for i, r in enumerate(raw_rules))
        return cls.from_rules(rules, defaults)

    @classmethod
    def from_rules(cls, rules: Iterable[Rule], defaults: OriginRequest) -> Ingress:
        """Build the lookup tables for already validated rules (the last one catches all)."""
        rules = tuple(rules)
        exact: dict[str, list[int]] = {}
        candidates: list[tuple[int, Rule, tuple[str, ...] | None, frozenset[str]]] = []
        for i, rule in enumerate(rules):
            names = {rule.hostname.lower()}
            if rule.punycode_hostname:
                names.add(rule.punycode_hostname)
            if rule.hostname in ("", "*"):
                candidates.append((i, rule, None, frozenset()))
            elif rule.hostname.startswith("*."):
                suffixes = tuple(sorted(n[1:] for n in names if n.startswith("*.")))
                exact_names = frozenset(n for n in names if not n.startswith("*."))
                candidates.append((i, rule, suffixes, exact_names))
                for name in exact_names:
                    exact.setdefault(name, []).append(i)
            else:
                for name in names:
                    exact.setdefault(name, []).append(i)
        others = tuple((r, s) for _, r, s, _ in candidates)
        by_host: dict[str, tuple[_Candidate, ...]] = {}
        for name, indices in exact.items():
            merged = sorted(
                [(i, rules[i], None) for i in indices]
                + [(i, r, s) for i, r, s, e in candidates if i not in indices],
                key=lambda t: t[0],
            )
            by_host[name] = tuple((r, s) for _, r, s in merged)
        return cls(rules=rules, defaults=defaults, _by_host=by_host, _others=others)

    @classmethod
    def single(
        cls,
        url: str | None = None,
        *,
        hello_world: bool = False,
        bastion: bool = False,
        unix_socket: str | None = None,
        origin_request: OriginRequest = DEFAULT_ORIGIN_REQUEST,
    ) -> Ingress:
        """One catch-all rule from `--hello-world`, `--bastion`, `--url` or `--unix-socket` (in
        cloudflared's order of precedence); with none of them, every request gets a 503."""
        service: Service
        cfg = origin_request
        if hello_world:
            service = HelloWorldService()
        elif bastion:
            service = BastionService()
        elif url is not None:
            service = _parse_cli_url(url)
        elif unix_socket is not None:
            service = UnixService(path=unix_socket, tls=False)
        else:
            service = StatusService(503)
        rule = Rule(hostname="", path=None, service=service, origin_request=cfg, index=0)
        return cls.from_rules((rule,), cfg)

    def match(self, host: str, path: str) -> tuple[int, Rule]:
        """The first rule matching `host` (Host header, port allowed) and `path` (no query)."""
        split = split_host_port(host)
        if split is not None:
            host = split[0]
        host = host.lower()
        for rule, suffixes in self._by_host.get(host, self._others):
            if suffixes is not None:
                for suffix in suffixes:
                    if host.endswith(suffix):
                        break
                else:
                    continue
            if rule.path is None or rule.path.search(path) is not None:
                return rule.index, rule
        last = self.rules[-1]
        return last.index, last

    @property
    def catch_all(self) -> Rule:
        return self.rules[-1]


def _is_decoded(data: Mapping[str, Any]) -> bool:
    """True for an overrides dict already decoded by burrow.ingress.config (snake_case keys)."""
    return all(k in OriginRequest.__dataclass_fields__ for k in data)


def _plain_rule(r: UnvalidatedRule | Mapping[str, Any]) -> Any:
    if isinstance(r, UnvalidatedRule):
        raise ConfigError("cannot mix decoded and plain ingress rules")
    return dict(r)


def _parse_cli_url(raw: str) -> Service:
    """`--url`: cloudflared's validation.ValidateUrl, then http(s) or TCP over WebSocket."""
    try:
        u = go_url_parse(_validate_url_string(raw))
    except ValueError as exc:
        raise ConfigError(f"Error validating origin URL: {exc}") from None
    hostname, port = u.hostname, u.port
    if u.scheme in _HTTP_SCHEMES:
        return HTTPService(
            url=f"{u.scheme}://{u.host}",
            scheme=u.scheme,
            host=hostname,
            port=int(port) if port else _HTTP_SCHEMES[u.scheme],
        )
    default = _STREAM_DEFAULT_PORTS.get(u.scheme)
    return StreamService(scheme=u.scheme, host=hostname, port=int(port) if port else default)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _validate_url_string(origin: str) -> str:
    if origin == "":
        raise ValueError("URL should not be empty")
    if _is_ip(origin):
        return f"http://[{origin}]" if ":" in origin else f"http://{origin}"
    if origin.startswith("[") and origin.endswith("]"):
        return f"http://{origin}"
    split = split_host_port(origin)
    if split is not None and _is_ip(split[0]):
        return "http://" + _join_host_port(*split)
    try:
        u = go_url_parse(origin)
    except ValueError:
        raise ValueError(f"URL {origin} has invalid format") from None
    if u.scheme and u.host:
        if u.scheme not in ("http", "https", "rdp", "ssh", "smb", "tcp"):
            raise ValueError(f"Currently Cloudflare Tunnel does not support {u.scheme} protocol.")
        hostname = u.hostname
        if not _is_ip(hostname):
            hostname = _to_punycode(hostname) or hostname
        if u.port:
            return f"{u.scheme}://{_join_host_port(hostname, u.port)}"
        return f"{u.scheme}://" + (f"[{hostname}]" if ":" in hostname else hostname)
    if split is None or split[0] == "":
        return f"http://{_to_punycode(origin) or origin}"
    return "http://" + _join_host_port(_to_punycode(split[0]) or split[0], split[1])
