"""AccessStore on a real SQLite store: records round-trip, writes bump the generation the edge
polls, secrets are hashed or sealed at rest (never in the database in clear)."""

from __future__ import annotations

from burrow.access.tokens import SigningKey
from burrow.store.access_store import AccessStore
from burrow.store.sealing import SecretBox
from burrow.store.sqlalchemy_store import SQLStore


async def test_roundtrip_generation_and_secrets_at_rest(tmp_path) -> None:
    db = tmp_path / "state.db"
    store = await SQLStore.open(f"sqlite+aiosqlite:///{db}")
    try:
        st = AccessStore(store, SecretBox.load_or_create(tmp_path))
        g0 = await store.change_counter()
        app = await st.create_app("a", "App.Example.com/Admin/*")
        assert app.domain == "app.example.com/admin/*" and len(app.aud) == 64
        await st.create_policy(app.id, "p", "allow", [("email", "A@x.com", "")])
        tok, secret = await st.create_service_token("ci", duration=60)
        await st.create_idp("m", "onetimepin", {"smtp_password": "hunter2-pw"})
        key = SigningKey.generate()
        await st.add_key(key.kid, key.private_pem())
        assert await store.change_counter() >= g0 + 5
        g1 = await store.change_counter()
        await st.put_pending("otp", {"x": 1}, ttl=600, now=1e9)  # login state: no bump
        assert await store.change_counter() == g1
        assert (await st.live_keys())[0].private_pem == key.private_pem()
        assert (await st.find_idp("m")).config["smtp_password"] == "hunter2-pw"
        assert (await st.find_service_token(tok.client_id)).id == tok.id
    finally:
        await store.close()
    raw = (
        db.read_bytes() + (tmp_path / "state.db-wal").read_bytes()
        if (tmp_path / "state.db-wal").exists()
        else db.read_bytes()
    )
    assert secret.encode() not in raw
    assert b"hunter2-pw" not in raw
    assert b"PRIVATE KEY" not in raw
    assert oct(db.stat().st_mode & 0o777) == "0o600"
