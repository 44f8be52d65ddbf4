"""Operator-created tunnels keep a sealed copy of their secret so `tunnel token` works later."""

from __future__ import annotations

from burrow.connector.credentials import decode_token
from burrow.edge.provision import create_tunnel
from burrow.pki.ca import EdgePKI
from burrow.store.sealing import SecretBox
from burrow.store.sqlalchemy_store import SQLStore


async def test_operator_tunnel_secret_is_sealed_and_recoverable(tmp_path) -> None:
    pki = EdgePKI.load_or_create(tmp_path)
    store = await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    try:
        made = await create_tunnel(store, pki, tmp_path, "t", ["a.example.com"], edges=["e:7844"])
        tunnel = await store.get_tunnel(made.tunnel.id)
    finally:
        await store.close()
    assert tunnel.secret_sealed is not None
    secret = SecretBox.load_or_create(tmp_path).open(tunnel.id, tunnel.secret_sealed)
    assert secret == made.credentials.tunnel_secret == decode_token(made.token).tunnel_secret
    assert made.credentials.tunnel_secret.hex() not in tunnel.secret_sealed
