"""Hashing of tunnel secrets and API tokens.

A tunnel secret is at least 32 bytes from a CSPRNG (256 bits of entropy), never a password a
person chose. Guessing it from its hash is as hard as guessing it outright, so a slow,
salted KDF (bcrypt, scrypt, argon2) buys nothing here and would only cost CPU on every
registration. A plain SHA-256, compared in constant time, is the right tool. The ``sha256$``
prefix leaves room for another scheme later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

__all__ = [
    "MIN_SECRET_BYTES",
    "ParsedToken",
    "hash_secret",
    "new_api_token",
    "new_login_code",
    "parse_api_token",
    "verify_secret",
]

MIN_SECRET_BYTES = 32
_PREFIX = "sha256$"


def hash_secret(secret: bytes) -> str:
    """``sha256$<hex digest>`` of a high-entropy tunnel secret."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"a tunnel secret must be at least {MIN_SECRET_BYTES} bytes")
    return _PREFIX + hashlib.sha256(secret).hexdigest()


def verify_secret(secret: bytes, stored: str) -> bool:
    """Whether ``secret`` matches the ``stored`` hash, in constant time."""
    if not stored.startswith(_PREFIX):
        return False
    digest = hashlib.sha256(secret).hexdigest()
    return hmac.compare_digest(
        digest.encode("ascii"), stored[len(_PREFIX) :].encode("ascii", "replace")
    )


# -- API tokens -------------------------------------------------------------------------------
#
# ``burrow_<id: 16 hex>_<secret: 43 url-safe base64 chars>``. The id is public (it names the
# token in lists and logs); only ``hash_secret(secret)`` is stored. Like a tunnel secret, the
# secret part is 32 CSPRNG bytes, so a plain SHA-256 compared in constant time is enough.

_TOKEN_RE = re.compile(r"^burrow_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class ParsedToken:
    token_id: str
    secret: bytes = field(repr=False)


def new_api_token() -> tuple[str, str, str]:
    """A fresh API token: ``(token_id, token_text, secret_hash)``."""
    token_id = secrets.token_hex(8)
    raw = secrets.token_bytes(32)
    text = "burrow_" + token_id + "_" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
    return token_id, text, hash_secret(raw)


def parse_api_token(text: str) -> ParsedToken | None:
    """The parts of a well-formed token, or None (never raises on garbage)."""
    match = _TOKEN_RE.match(text.strip())
    if match is None:
        return None
    raw = base64.urlsafe_b64decode(match.group(2) + "=")
    return ParsedToken(match.group(1), raw)


_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels (no words), no look-alike digits


def new_login_code() -> str:
    """A short code a person reads out and types: ``XXXX-XXXX`` (about 34 bits)."""
    chars = [secrets.choice(_CODE_ALPHABET) for _ in range(8)]
    return "".join(chars[:4]) + "-" + "".join(chars[4:])
