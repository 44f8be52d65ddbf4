"""Hashing of tunnel secrets.

A tunnel secret is at least 32 bytes from a CSPRNG (256 bits of entropy), never a password a
person chose. Guessing it from its hash is as hard as guessing it outright, so a slow,
salted KDF (bcrypt, scrypt, argon2) buys nothing here and would only cost CPU on every
registration. A plain SHA-256, compared in constant time, is the right tool. The ``sha256$``
prefix leaves room for another scheme later.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["MIN_SECRET_BYTES", "hash_secret", "verify_secret"]

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
