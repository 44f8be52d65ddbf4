"""`burrow access login|token|curl`: an Access app token for the command line.

`login(url)` generates an X25519 key pair, sends the user's browser to
`<app>/cdn-cgi/access/cli?key=<public key>` (the edge makes them log in if needed, then asks
them to confirm with a short code this command prints), polls
`<app>/cdn-cgi/access/transfer/<sha256(public key)>` until the edge has sealed the app token to
the key, decrypts it and stores it where `tcp_client.stored_app_token` reads it (mode 0600 in a
0700 directory). `access tcp|ssh` then send it as `cf-access-token`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import sys
import time
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from burrow.access.loopback import loopback_resolver
from burrow.access.tcp_client import AccessError, token_dir
from burrow.access.transfer import ClientKey, TransferError, b64u, fingerprint, transfer_id
from burrow.private_files import write_atomic

POLL_INTERVAL = 1.0
LOGIN_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class AppURL:
    scheme: str
    host: str  # lower-case, no port: the token's file name
    authority: str  # host[:port]
    path: str

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.authority}"

    @classmethod
    def parse(cls, url: str) -> AppURL:
        raw = url.strip()
        if "://" not in raw:
            raw = "https://" + raw
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AccessError(f"not an http(s) application URL: {url!r}")
        try:
            parts.port  # noqa: B018 - validates it
        except ValueError:
            raise AccessError(f"invalid port in {url!r}") from None
        host = parts.hostname.lower().rstrip(".")
        return cls(parts.scheme, host, parts.netloc.rsplit("@", 1)[-1], parts.path or "/")


def _session(cacert: str | None) -> aiohttp.ClientSession:
    ctx = ssl.create_default_context()
    if cacert:
        ctx.load_verify_locations(cafile=cacert)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, resolver=loopback_resolver()),
        timeout=aiohttp.ClientTimeout(total=15),
    )


def token_path(host: str) -> Path:
    return token_dir() / f"{host.lower().rstrip('.')}-token"


def store_token(host: str, token: str) -> Path:
    """Write with mode 0600 from the start (never readable by others, even briefly)."""
    directory = token_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = token_path(host)
    write_atomic(path, token.encode("ascii") + b"\n", mode=0o600)
    return path


def token_expiry(token: str) -> float | None:
    """`exp` of a JWT, read without verifying it (the edge verifies; this only avoids sending
    a token that is known to be stale)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def valid_stored_token(host: str, *, now: float | None = None) -> str | None:
    try:
        token = token_path(host).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    exp = token_expiry(token)
    if not token or exp is None or exp <= (time.time() if now is None else now):
        return None
    return token


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def login(
    url: str,
    *,
    open_browser: bool = True,
    cacert: str | None = None,
    wait: float = LOGIN_TIMEOUT,
) -> str:
    """The whole CLI login; returns the token (also stored)."""
    app = AppURL.parse(url)
    key = ClientKey.generate()
    link = f"{app.origin}/cdn-cgi/access/cli?key={b64u(key.public)}&path={quote(app.path, safe='')}"
    _say(
        "Please open the following URL and log in with your account:\n\n"
        f"{link}\n\nConfirm there that it shows the code {fingerprint(key.public)}."
    )
    if open_browser:
        try:
            webbrowser.open(link)
        except webbrowser.Error:
            pass
    poll = f"{app.origin}/cdn-cgi/access/transfer/{transfer_id(key.public)}"
    deadline = time.monotonic() + wait
    async with _session(cacert) as http:
        while True:
            try:
                async with http.get(poll, allow_redirects=False) as resp:
                    body: Any = await resp.json(content_type=None) if resp.status < 500 else None
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise AccessError(f"cannot reach {app.origin}: {type(exc).__name__}") from None
            if status == 200 and isinstance(body, dict):
                break
            if status != 404:
                raise AccessError(f"{app.origin} answered {status} to the token transfer")
            if time.monotonic() > deadline:
                raise AccessError("timed out waiting for the browser login")
            await asyncio.sleep(POLL_INTERVAL)
    try:
        token = key.open(body).decode("ascii")
    except (TransferError, UnicodeDecodeError) as exc:
        raise AccessError(str(exc)) from None
    if token.count(".") != 2:
        raise AccessError("the edge sent something that is not a token")
    store_token(app.host, token)
    return token
