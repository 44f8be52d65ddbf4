"""Creating tunnels on the edge host: store records, credentials and tokens.

Shared by `burrow edge tunnel create` and `burrow demo`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from burrow.connector.credentials import (
    TunnelCredentials,
    encode_token,
    generate_tunnel_secret,
)
from burrow.errors import Conflict
from burrow.net.listen import format_hostport
from burrow.pki.ca import EdgePKI
from burrow.store.records import Tunnel, normalize_hostname
from burrow.store.sealing import SecretBox
from burrow.store.secrets import hash_secret
from burrow.store.sqlalchemy_store import SQLStore

ADDRESSES_FILE = "edge.json"


@dataclass(frozen=True, slots=True)
class Provisioned:
    tunnel: Tunnel
    credentials: TunnelCredentials
    token: str
    hostnames: tuple[str, ...]


def advertised_edges(state_dir: Path) -> tuple[str, ...]:
    """The tunnel addresses a running edge recorded (wildcard binds become loopback)."""
    try:
        data = json.loads((state_dir / ADDRESSES_FILE).read_text())
        return tuple(str(a) for a in data.get("tunnel_addresses", []))
    except (OSError, ValueError, AttributeError):
        return ()


def record_addresses(state_dir: Path, tunnel: list[tuple[str, int]]) -> None:
    out = []
    for host, port in tunnel:
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        out.append(format_hostport(host, port))
    (state_dir / ADDRESSES_FILE).write_text(json.dumps({"tunnel_addresses": out}) + "\n")


async def create_tunnel(
    store: SQLStore,
    pki: EdgePKI,
    state_dir: Path,
    name: str,
    hostnames: Sequence[str],
    *,
    edges: Sequence[str] = (),
    overwrite: bool = False,
) -> Provisioned:
    """Create tunnel `name` in the default account and route `hostnames` to it.

    Hostnames are validated before anything is written; a hostname that belongs to another
    tunnel refuses the whole operation (unless `overwrite`) and the new tunnel is rolled back.
    """
    normalized = tuple(normalize_hostname(h) for h in hostnames)
    account = await store.get_or_create_default_account()
    if not overwrite:
        existing = {r.hostname: r.tunnel_id for r in await store.list_routes()}
        for host in normalized:
            if host in existing:
                raise Conflict(f"hostname {host} is already routed to tunnel {existing[host]}")
    secret = generate_tunnel_secret()
    tunnel_id = uuid.uuid4()
    # Sealed so that `tunnel token` can hand the token out again later (see store/sealing.py).
    sealed = SecretBox.load_or_create(state_dir).seal(tunnel_id, secret)
    tunnel = await store.create_tunnel(
        account.id, name, hash_secret(secret), tunnel_id=tunnel_id, secret_sealed=sealed
    )
    try:
        for host in normalized:
            await store.add_route(host, tunnel.id, overwrite=overwrite)
    except BaseException:
        await store.delete_tunnel(tunnel.id)
        raise
    creds = TunnelCredentials(
        account_tag=account.id,
        tunnel_secret=secret,
        tunnel_id=tunnel.id,
        edge=tuple(edges),
        ca_pem=pki.ca_pem.decode(),
    )
    return Provisioned(tunnel, creds, encode_token(creds), normalized)
