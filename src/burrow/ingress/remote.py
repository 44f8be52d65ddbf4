"""cloudflared's remote configuration format (PROTOCOL.md 3.4): the JSON an edge pushes with
`update-configuration` and stores for remotely managed tunnels.

    {"ingress": [{"hostname", "path", "service", "originRequest": {...}}, ...],
     "originRequest": {...}, "warp-routing": {...}}

It differs from config.yml in one way that matters: durations are JSON integers counting
**seconds** (cloudflared's `CustomDuration.UnmarshalJSON` uses `strconv.ParseInt`), so `"10s"`
or `1.5` are errors there. Encoding a config.yml into this form rounds durations to seconds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from burrow.errors import ConfigError
from burrow.ingress.config import (
    _ORIGIN_FIELDS,
    AccessConfig,
    ConfigFile,
    RawIPRule,
    UnvalidatedRule,
)
from burrow.ingress.rules import Ingress

_FIELD_KEYS = {name: (key, kind) for key, (name, kind) in _ORIGIN_FIELDS.items()}


def _go_json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _type_error(value: Any, field: str, go_type: str) -> ConfigError:
    return ConfigError(
        f"json: cannot unmarshal {_go_json_type(value)} into Go struct field "
        f"{field} of type {go_type}"
    )


def _decode_origin_request(data: Any, where: str) -> dict[str, Any]:
    """JSON originRequest -> the decoded (snake_case) overrides `OriginRequest.merged` takes."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _type_error(data, where, "config.OriginRequestConfig")
    out: dict[str, Any] = {}
    for key, value in data.items():
        spec = _ORIGIN_FIELDS.get(key)
        if spec is None or value is None:
            continue  # encoding/json ignores unknown fields; null leaves the pointer unset
        name, kind = spec
        field = f"{where}.{key}"
        if kind == "duration":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(
                    f"strconv.ParseInt: parsing {json.dumps(json.dumps(value))}: invalid syntax"
                )
            out[name] = float(value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise _type_error(value, field, "bool")
            out[name] = value
        elif kind in ("int", "uint"):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or (kind == "uint" and value < 0)
            ):
                raise _type_error(value, field, kind)
            out[name] = value
        elif kind == "string":
            if not isinstance(value, str):
                raise _type_error(value, field, "string")
            out[name] = value
        elif kind == "iprules":
            if not isinstance(value, list):
                raise _type_error(value, field, "[]config.IngressIPRule")
            rules = []
            for item in value:
                if not isinstance(item, dict):
                    raise _type_error(item, field, "config.IngressIPRule")
                rules.append(
                    RawIPRule(
                        prefix=item.get("prefix") or None,
                        ports=tuple(int(p) for p in item.get("ports") or ()),
                        allow=bool(item.get("allow", False)),
                    )
                )
            out[name] = tuple(rules)
        elif kind == "access":
            if not isinstance(value, dict):
                raise _type_error(value, field, "config.AccessConfig")
            out[name] = AccessConfig(
                required=bool(value.get("required", False)),
                team_name=str(value.get("teamName") or ""),
                aud_tag=tuple(str(a) for a in value.get("audTag") or ()),
                environment=str(value.get("environment") or ""),
            )
    return out


def parse_remote_config(data: Mapping[str, Any]) -> Ingress:
    """Validate a remote configuration (the `config` object of a push) into an Ingress,
    with cloudflared's validation messages; ConfigError on failure."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"json: cannot unmarshal {_go_json_type(data)} into Go value of type "
            "ingress.RemoteConfigJSON"
        )
    raw_rules = data.get("ingress")
    if raw_rules is not None and not isinstance(raw_rules, list):
        raise _type_error(raw_rules, "RemoteConfigJSON.ingress", "[]config.UnvalidatedIngressRule")
    rules = []
    for raw in raw_rules or ():
        if not isinstance(raw, dict):
            raise _type_error(raw, "RemoteConfigJSON.ingress", "config.UnvalidatedIngressRule")
        values: dict[str, Any] = {}
        for key in ("hostname", "path", "service"):
            value = raw.get(key)
            if value is not None and not isinstance(value, str):
                raise _type_error(value, f"UnvalidatedIngressRule.{key}", "string")
            values[key] = value or ""
        values["origin_request"] = _decode_origin_request(
            raw.get("originRequest"), "UnvalidatedIngressRule.originRequest"
        )
        rules.append(UnvalidatedRule(**values))
    top = _decode_origin_request(data.get("originRequest"), "RemoteConfigJSON.originRequest")
    return Ingress.parse(rules, top)


def decode_push(body: bytes) -> tuple[int, dict[str, Any]]:
    """A push body `{"version": N, "config": {...}}` -> (version, config); ConfigError if the
    envelope itself is malformed."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid configuration JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError("invalid configuration JSON: not an object")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not -(2**31) <= version < 2**31:
        raise ConfigError("invalid configuration JSON: version must be an int32")
    config = doc.get("config")
    if isinstance(config, (str, bytes)):
        # cloudflared's edge sends the config as raw JSON; some senders double-encode it.
        try:
            config = json.loads(config)
        except ValueError as exc:
            raise ConfigError(f"invalid configuration JSON: {exc}") from None
    return version, config if config is not None else {}


# --------------------------------------------------------------------------- encoding


def _encode_origin_request(overrides: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in overrides.items():
        spec = _FIELD_KEYS.get(name)
        if spec is None:
            continue
        key, kind = spec
        if kind == "duration":
            out[key] = round(float(value))
        elif kind == "iprules":
            out[key] = [
                {"prefix": r.prefix, "ports": list(r.ports), "allow": r.allow} for r in value
            ]
        elif kind == "access":
            out[key] = {
                "required": value.required,
                "teamName": value.team_name,
                "audTag": list(value.aud_tag),
                "environment": value.environment,
            }
        else:
            out[key] = value
    return out


def encode_config_file(cfg: ConfigFile) -> dict[str, Any]:
    """A loaded config.yml in the remote JSON form (validated first; ConfigError if invalid)."""
    Ingress.parse(list(cfg.ingress), cfg.origin_request)
    rules = []
    for rule in cfg.ingress:
        item: dict[str, Any] = {"service": rule.service}
        if rule.hostname:
            item["hostname"] = rule.hostname
        if rule.path:
            item["path"] = rule.path
        if rule.origin_request:
            item["originRequest"] = _encode_origin_request(rule.origin_request)
        rules.append(item)
    out: dict[str, Any] = {"ingress": rules}
    if cfg.origin_request:
        out["originRequest"] = _encode_origin_request(cfg.origin_request)
    out["warp-routing"] = {}  # private routing is not carried (durations differ in form)
    return out
