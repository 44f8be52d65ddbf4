"""Token transfer to the command line (`burrow access login`): the app token reaches the CLI
encrypted to a key the CLI generated, so the edge's transfer endpoint (which anyone who knows
the public key could poll) never hands out anything usable.

Scheme: X25519 key agreement between the CLI's key and a fresh ephemeral key of the edge,
HKDF-SHA256 over the shared secret (salt: both public keys), AES-256-GCM with a random nonce;
the transfer id (SHA-256 of the CLI's public key, hex) is the associated data.

`cryptography` is imported by the functions that encrypt, not with this module: the Access
service imports it into every edge, and most edges never transfer a token (the import costs a
long-running process ~10 MB of RSS).
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from burrow.errors import BurrowError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

INFO = b"burrow access token transfer v1"


class TransferError(BurrowError):
    status = 400


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64u(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise TransferError("bad base64") from None


def transfer_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()


def fingerprint(public_key: bytes) -> str:
    """A short code the CLI prints and the browser page shows, to compare by eye."""
    h = hashlib.sha256(b"fingerprint:" + public_key).hexdigest()[:8].upper()
    return f"{h[:4]}-{h[4:]}"


def parse_public_key(text: str) -> bytes:
    raw = unb64u(text)
    if len(raw) != 32:
        raise TransferError("the key must be 32 bytes (X25519)")
    return raw


def _key(shared: bytes, cli_pub: bytes, eph_pub: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=cli_pub + eph_pub, info=INFO).derive(
        shared
    )


def seal(cli_public: bytes, plaintext: bytes) -> dict[str, str]:
    """Edge side: encrypt to the CLI's public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = eph.exchange(X25519PublicKey.from_public_bytes(cli_public))
    nonce = os.urandom(12)
    aad = transfer_id(cli_public).encode()
    ct = AESGCM(_key(shared, cli_public, eph_pub)).encrypt(nonce, plaintext, aad)
    return {
        "alg": "X25519-HKDF-SHA256-A256GCM",
        "epk": b64u(eph_pub),
        "nonce": b64u(nonce),
        "ct": b64u(ct),
    }


@dataclass
class ClientKey:
    """CLI side: the key pair whose public half goes into the browser URL."""

    private: X25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> ClientKey:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        return cls(X25519PrivateKey.generate())

    @property
    def public(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def open(self, box: dict[str, Any]) -> bytes:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            eph_pub = unb64u(str(box["epk"]))
            nonce = unb64u(str(box["nonce"]))
            ct = unb64u(str(box["ct"]))
            shared = self.private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
            aad = transfer_id(self.public).encode()
            return AESGCM(_key(shared, self.public, eph_pub)).decrypt(nonce, ct, aad)
        except (KeyError, ValueError, InvalidTag):
            raise TransferError("the transferred token cannot be decrypted") from None
