"""The client side of the admin API: cert.pem (cloudflared's account credential) and a small
aiohttp client for the ``/client/v4`` and ``/api/v1`` endpoints.

cert.pem is a PEM block of type ``ARGO TUNNEL TOKEN`` whose body is JSON
``{"zoneID", "accountID", "apiToken", "endpoint"}``, exactly what cloudflared reads. cloudflared
ignores unknown keys, so burrow adds what its own CLI and connector need:

- ``burrowAPI``: the edge's admin API base URL (``http://127.0.0.1:7845``),
- ``burrowEdge``: the edge's tunnel addresses (``host:port``),
- ``burrowCA``: the edge CA certificate (PEM).

burrow has no DNS zones, so ``zoneID`` is the account id.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when used: `burrow tunnel run` loads this module but no client
    import aiohttp

from burrow.errors import BurrowError, ConfigError
from burrow.private_files import write_atomic

__all__ = [
    "CERT_PEM_TYPE",
    "DEFAULT_CERT_DIRS",
    "ApiCallError",
    "ApiClient",
    "OriginCert",
    "decode_origin_cert",
    "encode_origin_cert",
    "find_default_origin_cert",
    "load_origin_cert",
    "write_origin_cert",
]

CERT_PEM_TYPE = "ARGO TUNNEL TOKEN"
CERT_FILE = "cert.pem"
# cloudflared's search order for cert.pem
DEFAULT_CERT_DIRS = (
    "~/.cloudflared",
    "~/.cloudflare-warp",
    "~/cloudflare-warp",
    "/etc/cloudflared",
    "/usr/local/etc/cloudflared",
)
_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)
_MAX_CERT_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class OriginCert:
    account_id: str
    api_token: str = field(repr=False)
    zone_id: str = ""
    endpoint: str = ""
    api_url: str = ""  # burrow's admin API base URL
    edges: tuple[str, ...] = ()
    ca_pem: str | None = None
    path: Path | None = None


def encode_origin_cert(cert: OriginCert) -> bytes:
    body: dict[str, Any] = {
        "zoneID": cert.zone_id or cert.account_id,
        "accountID": cert.account_id,
        "apiToken": cert.api_token,
        "endpoint": cert.endpoint,
    }
    if cert.api_url:
        body["burrowAPI"] = cert.api_url
    if cert.edges:
        body["burrowEdge"] = list(cert.edges)
    if cert.ca_pem:
        body["burrowCA"] = cert.ca_pem
    b64 = base64.b64encode(json.dumps(body).encode()).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (
        f"-----BEGIN {CERT_PEM_TYPE}-----\n"
        + "\n".join(lines)
        + f"\n-----END {CERT_PEM_TYPE}-----\n"
    ).encode()


def decode_origin_cert(data: bytes, what: str = "origin certificate") -> OriginCert:
    """Parse cert.pem like cloudflared (legacy PRIVATE KEY/CERTIFICATE blocks are skipped;
    other block types and a missing token are errors), with clear messages."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not a PEM file (binary content)") from None
    if not text.strip():
        raise ConfigError(f"{what} is empty")
    blocks = _BLOCK.findall(text)
    if not blocks:
        if "-----BEGIN" in text:
            raise ConfigError(f"{what} is truncated (a PEM block has no END line)")
        raise ConfigError(f"{what} is not a PEM file")
    if text.count("-----BEGIN") != len(blocks):
        raise ConfigError(f"{what} is truncated (a PEM block has no END line)")
    body: dict[str, Any] | None = None
    for kind, b64 in blocks:
        if kind in ("PRIVATE KEY", "CERTIFICATE"):
            continue
        if kind != CERT_PEM_TYPE:
            raise ConfigError(f"{what}: unknown block {kind} in the certificate")
        if body is not None:
            raise ConfigError(f"{what}: found multiple tokens in the certificate")
        try:
            raw = base64.b64decode("".join(b64.split()), validate=True)
            parsed = json.loads(raw)
        except (binascii.Error, ValueError):
            raise ConfigError(
                f"{what}: the {CERT_PEM_TYPE} block is damaged (not base64 JSON); "
                "run `burrow tunnel login` again"
            ) from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"{what}: the {CERT_PEM_TYPE} block is not a JSON object")
        body = parsed
    if body is None or not body.get("apiToken") or not body.get("zoneID"):
        raise ConfigError(f"{what}: missing token in the certificate")
    fields = ("zoneID", "accountID", "apiToken", "endpoint", "burrowAPI")
    for key in fields:
        if key in body and not isinstance(body[key], str):
            raise ConfigError(f"{what}: field {key!r} is not a string")
    if not body.get("accountID"):
        raise ConfigError(
            f"{what} has no account id; delete it and run `burrow tunnel login` again"
        )
    edges = body.get("burrowEdge") or []
    if not isinstance(edges, list) or not all(isinstance(e, str) for e in edges):
        raise ConfigError(f"{what}: field 'burrowEdge' is not a list of strings")
    ca = body.get("burrowCA")
    if ca is not None and not (isinstance(ca, str) and "BEGIN CERTIFICATE" in ca):
        raise ConfigError(f"{what}: field 'burrowCA' is not a PEM certificate")
    return OriginCert(
        account_id=body["accountID"],
        api_token=body["apiToken"],
        zone_id=body["zoneID"],
        endpoint=str(body.get("endpoint") or "").lower(),
        api_url=str(body.get("burrowAPI") or ""),
        edges=tuple(edges),
        ca_pem=ca,
    )


def find_default_origin_cert() -> Path | None:
    for directory in DEFAULT_CERT_DIRS:
        path = Path(os.path.expanduser(directory)) / CERT_FILE
        if path.is_file():
            return path
    return None


def load_origin_cert(path: Path | None) -> OriginCert:
    """Read cert.pem from ``path`` or the default locations."""
    if path is None:
        path = find_default_origin_cert()
        if path is None:
            raise ConfigError(
                "no origin certificate (cert.pem) found in "
                + ", ".join(DEFAULT_CERT_DIRS)
                + "; run `burrow tunnel login`, or pass --origincert (TUNNEL_ORIGIN_CERT)"
            )
    path = Path(path).expanduser()
    what = f"origin certificate {path}"
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_CERT_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"cannot find {what}; run `burrow tunnel login` or fix --origincert"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{what} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > _MAX_CERT_BYTES:
        raise ConfigError(f"{what} is too large to be an origin certificate")
    cert = decode_origin_cert(data, what)
    return OriginCert(
        account_id=cert.account_id,
        api_token=cert.api_token,
        zone_id=cert.zone_id,
        endpoint=cert.endpoint,
        api_url=cert.api_url,
        edges=cert.edges,
        ca_pem=cert.ca_pem,
        path=path,
    )


def write_origin_cert(path: Path, cert: OriginCert) -> None:
    """Write cert.pem with mode 0600, atomically; refuse to replace an existing file (like
    cloudflared's login)."""
    path = Path(path).expanduser()
    if path.exists():
        raise ConfigError(
            f"you have an existing certificate at {path} which login would overwrite; "
            "move or delete that file, then run this command again"
        )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    try:
        # replace=False: fail rather than replace a file that appeared meanwhile
        write_atomic(path, encode_origin_cert(cert), mode=0o600, replace=False)
    except FileExistsError:
        raise ConfigError(f"{path} appeared while logging in; not replacing it") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None


class ApiCallError(BurrowError):
    """The API answered with an error (``status`` is its HTTP status)."""


class ApiClient:
    """A few JSON calls against the admin API, unwrapping Cloudflare's envelope."""

    def __init__(self, base_url: str, token: str | None, *, timeout_s: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        import aiohttp

        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"ApiClient({self.base_url!r})"

    async def __aenter__(self) -> ApiClient:
        import aiohttp

        headers = {"Accept": "application/json", "User-Agent": "burrow"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        self._session = aiohttp.ClientSession(headers=headers, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        full = await self.call_full(method, path, body=body, params=params)
        return full.get("result")

    async def call_full(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        import aiohttp

        assert self._session is not None, "use ApiClient in `async with`"
        url = self.base_url + path
        try:
            async with self._session.request(method, url, json=body, params=params) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiCallError(
                f"cannot reach the burrow API at {self.base_url}: {exc or type(exc).__name__}",
                status=503,
            ) from None
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if not isinstance(data, dict) or "success" not in data:
            raise ApiCallError(
                f"{method} {url} answered HTTP {status} without an API envelope "
                "(is this the edge's admin address?)",
                status=status if status >= 400 else 502,
            )
        if not data.get("success") or status >= 400:
            errors = data.get("errors") or []
            message = "; ".join(
                str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors
            )
            raise ApiCallError(message or f"HTTP {status}", status=status)
        return data
