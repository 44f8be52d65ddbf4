"""Sealing tunnel secrets, so that the edge can hand a tunnel's token out again.

cloudflared's `tunnel token NAME` asks the API for the token of an existing tunnel, so the edge
must be able to recover the secret; a hash alone cannot do that. The secret is kept twice: a
hash (which registration checks, in constant time) and a copy sealed with AES-256-GCM under a
key that lives in the edge's state directory, not in the database. A stolen database (or
PostgreSQL backup) therefore yields neither usable secrets nor tokens. The tunnel id is the
associated data, so a sealed secret cannot be moved to another tunnel's row.

Edge nodes sharing one PostgreSQL database must share this key file (like the CA files).

`cryptography` is imported when a secret is first sealed or opened, not with this module: the
edge creates its box at start, but most edges never seal anything after that, and the import
costs a long-running process ~10 MB of RSS.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from burrow.errors import ConfigError
from burrow.private_files import write_atomic

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_FILE", "SecretBox"]

KEY_FILE = "seal.key"
_PREFIX = "aesgcm1$"


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigError("the sealing key must be 32 bytes")
        self._key = key
        self._aead_obj: AESGCM | None = None

    @property
    def _aead(self) -> AESGCM:
        if self._aead_obj is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._aead_obj = AESGCM(self._key)
        return self._aead_obj

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    @classmethod
    def load_or_create(cls, state_dir: Path) -> SecretBox:
        path = state_dir / KEY_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = b""
        except OSError as exc:
            raise ConfigError(f"cannot read sealing key {path}: {exc.strerror or exc}") from None
        if not raw:
            key = secrets.token_bytes(32)
            try:
                # never replace a key another process just wrote
                write_atomic(path, base64.b64encode(key) + b"\n", mode=0o600, replace=False)
            except FileExistsError:
                pass
            except OSError as exc:
                raise ConfigError(
                    f"cannot write sealing key {path}: {exc.strerror or exc}"
                ) from None
            raw = path.read_bytes()
        try:
            return cls(base64.b64decode(raw.strip(), validate=True))
        except (binascii.Error, ValueError):
            raise ConfigError(f"sealing key {path} is corrupt") from None

    def seal(self, tunnel_id: uuid.UUID, secret: bytes) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, secret, tunnel_id.bytes)
        return _PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, tunnel_id: uuid.UUID, sealed: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        if not sealed.startswith(_PREFIX):
            raise ConfigError("unknown sealed-secret format")
        try:
            blob = base64.b64decode(sealed[len(_PREFIX) :], validate=True)
            return self._aead.decrypt(blob[:12], blob[12:], tunnel_id.bytes)
        except (binascii.Error, ValueError, InvalidTag):
            raise ConfigError(
                f"the secret of tunnel {tunnel_id} cannot be unsealed with this edge's key"
            ) from None
