"""Tunnel credentials: cloudflared's credentials file and ``--token`` formats.

Credentials file (``tunnel create`` writes it, mode 0600), JSON with Go field names::

    {"AccountTag": "<32 hex>", "TunnelSecret": "<std base64>", "TunnelID": "<uuid>",
     "Endpoint": ""}

Token: standard base64 of JSON ``{"a": AccountTag, "s": base64(secret), "t": TunnelID}``;
cloudflared also defines ``"e"`` (its ``Endpoint`` string, omitted when empty). cloudflared
ignores unknown keys, so burrow adds its own for its connector:

- ``"be"``: list of edge addresses ``"host:port"``,
- ``"bc"``: the edge CA certificate (PEM).

(``"e"`` cannot carry the edge list: cloudflared decodes it as a string and would reject a
token holding a list there.)
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from burrow.errors import ConfigError
from burrow.private_files import write_atomic

__all__ = [
    "MIN_SECRET_BYTES",
    "TunnelCredentials",
    "decode_token",
    "encode_token",
    "generate_tunnel_secret",
    "load_credentials_file",
    "new_account_tag",
    "write_credentials_file",
]

MIN_SECRET_BYTES = 32
_MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class TunnelCredentials:
    account_tag: str
    tunnel_secret: bytes = field(repr=False)
    tunnel_id: uuid.UUID
    endpoint: str = ""
    edge: tuple[str, ...] = ()
    ca_pem: str | None = None


def generate_tunnel_secret() -> bytes:
    """32 random bytes, like ``cloudflared tunnel create``."""
    return secrets.token_bytes(32)


def new_account_tag() -> str:
    """A fresh account tag: 32 lower-case hex digits."""
    return uuid.uuid4().hex


# -- field decoding (shared by the file and the token) ----------------------------------------


def _str_field(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        kind = "missing" if value is None else f"not a string ({type(value).__name__})"
        raise ConfigError(f"{what}: field {key!r} is {kind}")
    return value


def _secret(value: str, key: str, what: str) -> bytes:
    try:
        secret = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what}: field {key!r} is not valid standard base64") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{what}: field {key!r} decodes to {len(secret)} bytes; a tunnel secret has at "
            f"least {MIN_SECRET_BYTES}"
        )
    return secret


def _uuid(value: str, key: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise ConfigError(f"{what}: field {key!r} is not a UUID: {value[:64]!r}") from None


def _account_tag(value: str, key: str, what: str) -> str:
    tag = value.strip()
    if not tag:
        raise ConfigError(f"{what}: field {key!r} is empty")
    return tag


def _check_required(obj: object, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ConfigError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ConfigError(f"{what}: missing field(s) {', '.join(map(repr, missing))}")
    return obj


# -- credentials file -------------------------------------------------------------------------


def load_credentials_file(path: Path | str) -> TunnelCredentials:
    """Read a cloudflared credentials file; every problem is a :class:`ConfigError` naming
    the file (never echoing the secret)."""
    path = Path(path)
    what = f"credentials file {path}"
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"{what} does not exist (create it with `tunnel create`, or pass --token)"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{what} is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_FILE_BYTES:
        raise ConfigError(f"{what} is too large to be a credentials file")
    if not raw.strip():
        raise ConfigError(f"{what} is empty")
    try:
        obj = json.loads(raw)
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        ended = exc.pos >= len(raw.rstrip()) or exc.msg.startswith("Unterminated")
        hint = "truncated (incomplete JSON)" if ended else "not valid JSON"
        raise ConfigError(
            f"{what} is {hint} (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    obj = _check_required(obj, ("AccountTag", "TunnelSecret", "TunnelID"), what)
    endpoint = obj.get("Endpoint") or ""
    if not isinstance(endpoint, str):
        raise ConfigError(f"{what}: field 'Endpoint' is not a string")
    return TunnelCredentials(
        account_tag=_account_tag(_str_field(obj, "AccountTag", what), "AccountTag", what),
        tunnel_secret=_secret(_str_field(obj, "TunnelSecret", what), "TunnelSecret", what),
        tunnel_id=_uuid(_str_field(obj, "TunnelID", what), "TunnelID", what),
        endpoint=endpoint,
    )


def write_credentials_file(path: Path | str, creds: TunnelCredentials) -> None:
    """Write ``creds`` in cloudflared's format: mode 0600 from creation, atomically (a
    temporary file in the same directory, then rename)."""
    path = Path(path)
    body = {
        "AccountTag": creds.account_tag,
        "TunnelSecret": base64.b64encode(creds.tunnel_secret).decode("ascii"),
        "TunnelID": str(creds.tunnel_id),
        "Endpoint": creds.endpoint,
    }
    data = json.dumps(body).encode("utf-8")
    try:
        write_atomic(path, data, mode=0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write credentials file {path}: {exc.strerror or exc}") from None


# -- token ------------------------------------------------------------------------------------


def encode_token(creds: TunnelCredentials) -> str:
    """The ``--token`` form of ``creds`` (accepted by cloudflared and by burrow)."""
    body: dict[str, Any] = {
        "a": creds.account_tag,
        "s": base64.b64encode(creds.tunnel_secret).decode("ascii"),
        "t": str(creds.tunnel_id),
    }
    if creds.endpoint:
        body["e"] = creds.endpoint
    if creds.edge:
        body["be"] = list(creds.edge)
    if creds.ca_pem:
        body["bc"] = creds.ca_pem
    return base64.b64encode(json.dumps(body, separators=(",", ":")).encode("utf-8")).decode("ascii")


def _is_host_port(value: object) -> bool:
    if not isinstance(value, str):
        return False
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def decode_token(token: str) -> TunnelCredentials:
    """Parse a tunnel token (cloudflared's, or burrow's with extra keys)."""
    what = "tunnel token"
    text = "".join(token.split())
    if not text:
        raise ConfigError("tunnel token is empty")
    text += "=" * (-len(text) % 4)  # tolerate lost padding
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("tunnel token is not valid base64 (was it copied completely?)") from None
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(
            "tunnel token does not decode to JSON (truncated or not a tunnel token)"
        ) from None
    obj = _check_required(obj, ("a", "s", "t"), what)
    endpoint = obj.get("e") or ""
    if not isinstance(endpoint, str):
        raise ConfigError(f"{what}: field 'e' is not a string")
    edge_raw = obj.get("be") or []
    if not isinstance(edge_raw, list) or not all(_is_host_port(x) for x in edge_raw):
        raise ConfigError(f"{what}: field 'be' is not a list of \"host:port\" strings")
    ca_pem = obj.get("bc")
    if ca_pem is not None and not (
        isinstance(ca_pem, str) and "-----BEGIN CERTIFICATE-----" in ca_pem
    ):
        raise ConfigError(f"{what}: field 'bc' is not a PEM certificate")
    return TunnelCredentials(
        account_tag=_account_tag(_str_field(obj, "a", what), "a", what),
        tunnel_secret=_secret(_str_field(obj, "s", what), "s", what),
        tunnel_id=_uuid(_str_field(obj, "t", what), "t", what),
        endpoint=endpoint,
        edge=tuple(edge_raw),
        ca_pem=ca_pem or None,
    )
