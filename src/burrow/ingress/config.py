"""cloudflared's config.yml as far as ingress is concerned: rules, `originRequest`, durations.

The YAML is read with PyYAML's safe composer, then decoded node by node with the typing rules of
Go's `gopkg.in/yaml.v3` (which cloudflared uses), so that the same documents are accepted and the
same messages come out: a bare `connectTimeout: 10` is rejected with
``line N: cannot unmarshal !!int `10` into time.Duration``, `yes` is a string except in a bool
field, unknown keys inside rules are warnings, duplicate keys are errors.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from burrow.errors import ConfigError

# --------------------------------------------------------------------------- durations (Go syntax)

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def parse_duration(text: str) -> float:
    """Go's `time.ParseDuration`, in seconds; raises ValueError with Go's message."""
    quoted = _go_quote(text)
    s = text
    neg = False
    if s[:1] in ("-", "+"):
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0.0
    while s:
        m = _DURATION_PART.match(s)
        assert m is not None
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            raise ValueError(f"time: invalid duration {quoted}")
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _UNITS:
            # Go stops the unit at the next digit or '.'; so does the regex.
            raise ValueError(f"time: unknown unit {_go_quote(unit)} in duration {quoted}")
        value = float(f"{whole or '0'}.{frac or '0'}")
        total += value * _UNITS[unit]
        s = s[m.end() :]
    if total > 9223372036.854775807:
        raise ValueError(f"time: invalid duration {quoted}")
    return -total if neg else total


def format_duration(seconds: float) -> str:
    """Go's `time.Duration.String()` for whole-nanosecond values ("1m30s", "100ms", "0s")."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("\u00b5s", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _trim(ns / size) + unit
    h, rem = divmod(ns, 3_600_000_000_000)
    m, rem = divmod(rem, 60_000_000_000)
    secs = _trim(rem / 1e9) + "s"
    out = (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + secs
    return sign + out


def _trim(v: float) -> str:
    text = f"{v:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def _go_quote(s: str) -> str:
    """Go's %q for the printable strings found in config files."""
    out = ['"']
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


# --------------------------------------------------------------------------- the option types


@dataclass(frozen=True, slots=True)
class AccessConfig:
    required: bool = False
    team_name: str = ""
    aud_tag: tuple[str, ...] = ()
    environment: str = ""
    certs_url: str = ""  # burrow: where the team's keys are (its team domain is its own)


@dataclass(frozen=True, slots=True)
class IPRule:
    """One `ipRules` entry; `prefix` is the network (host bits cleared, as Go's ParseCIDR)."""

    prefix: ipaddress.IPv4Network | ipaddress.IPv6Network
    ports: tuple[int, ...] = ()
    allow: bool = False


@dataclass(frozen=True, slots=True)
class RawIPRule:
    prefix: str | None = None
    ports: tuple[int, ...] = ()
    allow: bool = False


def ip_rule_from_raw(raw: RawIPRule) -> IPRule:
    """ipaccess.NewRuleByCIDR; raises ValueError with cloudflared's message."""
    if not raw.prefix:
        raise ValueError("no prefix provided")
    if "/" not in raw.prefix:
        raise ValueError(f"unable to parse cidr: {raw.prefix}")
    try:
        net = ipaddress.ip_network(raw.prefix, strict=False)
    except ValueError:
        raise ValueError(f"unable to parse cidr: {raw.prefix}") from None
    ports = tuple(sorted(raw.ports))
    for port in ports:
        if port < 1 or port > 65535:
            raise ValueError(f"invalid port {port}, needs to be between 1 and 65535")
    return IPRule(prefix=net, ports=ports, allow=raw.allow)


@dataclass(frozen=True, slots=True)
class OriginRequest:
    """How the connector talks to one origin. Durations are in seconds."""

    connect_timeout: float = 30.0
    tls_timeout: float = 10.0
    tcp_keep_alive: float = 30.0
    no_happy_eyeballs: bool = False
    keep_alive_connections: int = 100
    keep_alive_timeout: float = 90.0
    http_host_header: str = ""
    origin_server_name: str = ""
    match_sni_to_host: bool = False
    ca_pool: str = ""
    no_tls_verify: bool = False
    disable_chunked_encoding: bool = False
    bastion_mode: bool = False
    proxy_address: str = "127.0.0.1"
    proxy_port: int = 0
    proxy_type: str = ""
    ip_rules: tuple[IPRule, ...] = ()
    http2_origin: bool = False
    access: AccessConfig = field(default_factory=AccessConfig)

    def merged(self, overrides: Mapping[str, Any]) -> OriginRequest:
        """This config with the options set in `overrides` (decoded, snake_case) replacing ours.

        `ip_rules` overrides are `RawIPRule`s: invalid ones are dropped as cloudflared does, and
        an empty list leaves the inherited rules.
        """
        if not overrides:
            return self
        changes = dict(overrides)
        raw_rules = changes.pop("ip_rules", None)
        if raw_rules:
            rules = []
            for raw in raw_rules:
                try:
                    rules.append(ip_rule_from_raw(raw))
                except ValueError:
                    continue
            changes["ip_rules"] = tuple(rules)
        return dataclasses.replace(self, **changes)


DEFAULT_ORIGIN_REQUEST = OriginRequest()

# yaml key -> (field name, kind)
_ORIGIN_FIELDS: dict[str, tuple[str, str]] = {
    "connectTimeout": ("connect_timeout", "duration"),
    "tlsTimeout": ("tls_timeout", "duration"),
    "tcpKeepAlive": ("tcp_keep_alive", "duration"),
    "noHappyEyeballs": ("no_happy_eyeballs", "bool"),
    "keepAliveConnections": ("keep_alive_connections", "int"),
    "keepAliveTimeout": ("keep_alive_timeout", "duration"),
    "httpHostHeader": ("http_host_header", "string"),
    "originServerName": ("origin_server_name", "string"),
    "matchSNItoHost": ("match_sni_to_host", "bool"),
    "caPool": ("ca_pool", "string"),
    "noTLSVerify": ("no_tls_verify", "bool"),
    "disableChunkedEncoding": ("disable_chunked_encoding", "bool"),
    "bastionMode": ("bastion_mode", "bool"),
    "proxyAddress": ("proxy_address", "string"),
    "proxyPort": ("proxy_port", "uint"),
    "proxyType": ("proxy_type", "string"),
    "ipRules": ("ip_rules", "iprules"),
    "http2Origin": ("http2_origin", "bool"),
    "access": ("access", "access"),
}

_GO_TYPES = {
    "duration": "time.Duration",
    "bool": "bool",
    "int": "int",
    "uint": "uint",
    "string": "string",
    "iprules": "[]config.IngressIPRule",
    "access": "config.AccessConfig",
}


@dataclass(frozen=True, slots=True)
class UnvalidatedRule:
    """One entry of `ingress:` as written (cloudflared's UnvalidatedIngressRule)."""

    hostname: str = ""
    path: str = ""
    service: str = ""
    origin_request: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """The ingress-relevant content of a config file, plus everything else as plain data."""

    source: str  # "" when nothing was loaded (cloudflared: no configuration file)
    ingress: tuple[UnvalidatedRule, ...] = ()
    origin_request: Mapping[str, Any] = field(default_factory=dict)
    warnings: str = ""  # unknown keys, as cloudflared's strict second pass reports them
    raw: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- yaml.v3-style decoding

_STR = "tag:yaml.org,2002:str"
_SHORT = {
    "tag:yaml.org,2002:str": "!!str",
    "tag:yaml.org,2002:int": "!!int",
    "tag:yaml.org,2002:float": "!!float",
    "tag:yaml.org,2002:bool": "!!bool",
    "tag:yaml.org,2002:null": "!!null",
    "tag:yaml.org,2002:map": "!!map",
    "tag:yaml.org,2002:seq": "!!seq",
    "tag:yaml.org,2002:timestamp": "!!timestamp",
}
_NULLS = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}
_YAML11_TRUE = {"y", "Y", "yes", "Yes", "YES", "on", "On", "ON"}
_YAML11_FALSE = {"n", "N", "no", "No", "NO", "off", "Off", "OFF"}
_INT = re.compile(r"[-+]?(?:0[xX][0-9a-fA-F]+|0[oO]?[0-7]+|0[bB][01]+|[0-9]+)\Z")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?\Z")
_SPECIAL_FLOATS = {".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF"}
_NANS = {".nan", ".NaN", ".NAN"}


_RESOLVER = yaml.resolver.Resolver()


def _resolve(node: yaml.ScalarNode) -> tuple[str, Any]:
    """(short tag, value) as yaml.v3 resolves a scalar (YAML 1.2 core schema)."""
    value: str = node.value
    if node.style is not None:  # quoted or block scalars are strings
        return "!!str", value
    implicit = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    if node.tag == _STR and implicit != _STR:
        return "!!str", value  # an explicit !!str
    if node.tag not in _SHORT:
        return node.tag, value
    if value in _NULLS:
        return "!!null", None
    if value in _TRUE:
        return "!!bool", True
    if value in _FALSE:
        return "!!bool", False
    plain = value.replace("_", "")
    if _INT.match(plain):
        sign = -1 if plain.startswith("-") else 1
        digits = plain.lstrip("+-")
        if digits[:2] in ("0x", "0X"):
            number = int(digits[2:], 16)
        elif digits[:2] in ("0o", "0O"):
            number = int(digits[2:], 8)
        elif digits[:2] in ("0b", "0B"):
            number = int(digits[2:], 2)
        elif len(digits) > 1 and digits.startswith("0"):
            number = int(digits, 8)
        else:
            number = int(digits)
        return "!!int", sign * number
    if _FLOAT.match(plain):
        return "!!float", float(plain)
    if value in _SPECIAL_FLOATS:
        return "!!float", float(value.replace(".", ""))
    if value in _NANS:
        return "!!float", float("nan")
    return "!!str", value


class _Decoder:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.unknown: list[str] = []

    def terror(self, node: yaml.Node, into: str) -> None:
        if isinstance(node, yaml.ScalarNode):
            tag, _ = _resolve(node)
            value = node.value
            value = f" `{value[:7]}...`" if len(value) > 10 else f" `{value}`"
        else:
            tag = "!!map" if isinstance(node, yaml.MappingNode) else "!!seq"
            value = ""
        line = node.start_mark.line + 1
        self.errors.append(f"line {line}: cannot unmarshal {tag}{value} into {into}")

    def check_duplicates(self, node: yaml.Node) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[type, str], int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    ident = (type(key), key.value)
                    if ident in seen:
                        self.errors.append(
                            f"line {key.start_mark.line + 1}: mapping key {_go_quote(key.value)} "
                            f"already defined at line {seen[ident]}"
                        )
                    else:
                        seen[ident] = key.start_mark.line + 1
                self.check_duplicates(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                self.check_duplicates(item)

    def fields(self, node: yaml.Node, go_type: str) -> list[tuple[str, yaml.Node]] | None:
        """The (key, value) pairs of a mapping decoded into a Go struct; None if not decodable."""
        if isinstance(node, yaml.ScalarNode) and _resolve(node)[0] == "!!null":
            return []
        if not isinstance(node, yaml.MappingNode):
            self.terror(node, go_type)
            return None
        return [(k.value if isinstance(k, yaml.ScalarNode) else "", v) for k, v in node.value]

    def unknown_field(self, key_node_line: int, name: str, go_type: str) -> None:
        self.unknown.append(f"line {key_node_line}: field {name} not found in type {go_type}")

    def scalar(self, node: yaml.Node, kind: str) -> Any:
        """Decode a scalar into a Go kind; returns None for null (pointer left unset)."""
        into = _GO_TYPES.get(kind, kind)
        if not isinstance(node, yaml.ScalarNode):
            self.terror(node, into)
            return None
        tag, value = _resolve(node)
        if tag == "!!null":
            return "" if kind == "string" else None
        if kind == "string":
            return node.value
        if kind == "duration":
            if tag == "!!str":
                try:
                    return parse_duration(value)
                except ValueError:
                    pass
        elif kind == "bool":
            if tag == "!!bool":
                return value
            if tag == "!!str" and value in _YAML11_TRUE:
                return True
            if tag == "!!str" and value in _YAML11_FALSE:
                return False
        elif kind == "int":
            if tag in ("!!int", "!!float") and -(2**63) <= value < 2**63:
                return int(value)
        elif kind == "uint":
            if tag in ("!!int", "!!float") and 0 <= value < 2**64:
                return int(value)
        self.terror(node, into)
        return None

    def seq(self, node: yaml.Node, go_type: str) -> list[yaml.Node] | None:
        if isinstance(node, yaml.ScalarNode) and _resolve(node)[0] == "!!null":
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.terror(node, go_type)
            return None
        return list(node.value)

    def origin_request(self, node: yaml.Node) -> dict[str, Any]:
        out: dict[str, Any] = {}
        pairs = self.fields(node, "config.OriginRequestConfig")
        for key, value in pairs or ():
            spec = _ORIGIN_FIELDS.get(key)
            if spec is None:
                self.unknown_field(value.start_mark.line + 1, key, "config.OriginRequestConfig")
                continue
            name, kind = spec
            decoded: Any
            if kind == "access":
                decoded = self.access(value)
            elif kind == "iprules":
                decoded = self.ip_rules(value)
            else:
                decoded = self.scalar(value, kind)
            if decoded is not None:
                out[name] = decoded
            else:
                out.pop(name, None)
        return out

    def access(self, node: yaml.Node) -> AccessConfig | None:
        pairs = self.fields(node, "config.AccessConfig")
        if pairs is None:
            return None
        if not pairs and isinstance(node, yaml.ScalarNode):
            return None
        values: dict[str, Any] = {}
        for key, value in pairs:
            if key == "required":
                values["required"] = bool(self.scalar(value, "bool"))
            elif key in ("teamName", "environment"):
                name = "team_name" if key == "teamName" else "environment"
                values[name] = self.scalar(value, "string") or ""
            elif key == "certsUrl":
                values["certs_url"] = self.scalar(value, "string") or ""
            elif key == "audTag":
                items = self.seq(value, "[]string") or []
                values["aud_tag"] = tuple(str(self.scalar(i, "string") or "") for i in items)
            else:
                self.unknown_field(value.start_mark.line + 1, key, "config.AccessConfig")
        return AccessConfig(**values)

    def ip_rules(self, node: yaml.Node) -> tuple[RawIPRule, ...]:
        rules = []
        for item in self.seq(node, "[]config.IngressIPRule") or ():
            pairs = self.fields(item, "config.IngressIPRule")
            if pairs is None:
                continue
            values: dict[str, Any] = {}
            for key, value in pairs:
                if key == "prefix":
                    prefix = self.scalar(value, "string")
                    values["prefix"] = prefix if prefix else None
                elif key == "ports":
                    ports = [self.scalar(p, "int") for p in self.seq(value, "[]int") or ()]
                    values["ports"] = tuple(p for p in ports if p is not None)
                elif key == "allow":
                    values["allow"] = bool(self.scalar(value, "bool"))
                else:
                    self.unknown_field(value.start_mark.line + 1, key, "config.IngressIPRule")
            rules.append(RawIPRule(**values))
        return tuple(rules)

    def rule(self, node: yaml.Node) -> UnvalidatedRule | None:
        pairs = self.fields(node, "config.UnvalidatedIngressRule")
        if pairs is None:
            return None
        values: dict[str, Any] = {}
        for key, value in pairs:
            if key in ("hostname", "path", "service"):
                values[key] = self.scalar(value, "string") or ""
            elif key == "originRequest":
                values["origin_request"] = self.origin_request(value)
            else:
                self.unknown_field(value.start_mark.line + 1, key, "config.UnvalidatedIngressRule")
        return UnvalidatedRule(**values)

    def rules(self, node: yaml.Node) -> tuple[UnvalidatedRule, ...]:
        out = []
        for item in self.seq(node, "[]config.UnvalidatedIngressRule") or ():
            rule = self.rule(item)
            out.append(rule if rule is not None else UnvalidatedRule())
        return tuple(out)


def _unmarshal_errors(lines: list[str]) -> str:
    return "yaml: unmarshal errors:\n  " + "\n  ".join(lines)


def _compose(text: str, source: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            f"error parsing YAML in config file at {source}: yaml: {line}{problem}"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"error parsing YAML in config file at {source}: yaml: {exc}") from None


def parse_config_text(text: str, source: str = "") -> ConfigFile:
    """Decode a config file's text as cloudflared does; `source` names it in messages.

    An empty document yields a ConfigFile with `source` "" (cloudflared then behaves as if no
    configuration file was found). Type errors raise ConfigError with cloudflared's text.
    """
    node = _compose(text, source)
    if node is None:
        return ConfigFile(source="")
    dec = _Decoder()
    dec.check_duplicates(node)
    ingress: tuple[UnvalidatedRule, ...] = ()
    origin: dict[str, Any] = {}
    pairs = dec.fields(node, "config.configFileSettings")
    for key, value in pairs or ():
        if key == "ingress":
            ingress = dec.rules(value)
        elif key == "originRequest":
            origin = dec.origin_request(value)
    if dec.errors:
        raise ConfigError(
            f"error parsing YAML in config file at {source}: {_unmarshal_errors(dec.errors)}"
        )
    raw = yaml.safe_load(text)
    return ConfigFile(
        source=source,
        ingress=ingress,
        origin_request=origin,
        warnings=_unmarshal_errors(dec.unknown) if dec.unknown else "",
        raw=raw if isinstance(raw, dict) else {},
    )


def load_config_file(path: str | Path) -> ConfigFile:
    """Read and decode a config file; ConfigError with Go's `open PATH: ...` on I/O errors."""
    name = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise ConfigError(f"open {name}: no such file or directory") from None
    except IsADirectoryError:
        # Go opens directories fine and then fails to read them.
        raise ConfigError(
            f"error parsing YAML in config file at {name}: read {name}: is a directory"
        ) from None
    except PermissionError:
        raise ConfigError(f"open {name}: permission denied") from None
    except OSError as exc:
        raise ConfigError(f"open {name}: {exc.strerror or exc}") from None
    return parse_config_text(text, name)


def decode_rules(
    rules: Any, origin_request: Any = None
) -> tuple[tuple[UnvalidatedRule, ...], dict[str, Any]]:
    """Decode already-loaded plain data (e.g. from `yaml.safe_load`) with the same typing rules.

    Lines in messages then refer to a re-serialisation of the data, not to any original file.
    """
    dec = _Decoder()
    ingress: tuple[UnvalidatedRule, ...] = ()
    origin: dict[str, Any] = {}
    if rules is not None:
        node = yaml.compose(yaml.safe_dump(rules), Loader=yaml.SafeLoader)
        if node is not None:
            ingress = dec.rules(node)
    if isinstance(origin_request, OriginRequest):
        raise TypeError("pass an OriginRequest as the defaults, not as raw data")
    if origin_request is not None:
        node = yaml.compose(yaml.safe_dump(origin_request), Loader=yaml.SafeLoader)
        if node is not None:
            origin = dec.origin_request(node)
    if dec.errors:
        raise ConfigError(_unmarshal_errors(dec.errors))
    return ingress, origin


def origin_request_from_config(overrides: Mapping[str, Any]) -> OriginRequest:
    """cloudflared's originRequestFromConfig: defaults, then the top-level options."""
    return DEFAULT_ORIGIN_REQUEST.merged(overrides)
