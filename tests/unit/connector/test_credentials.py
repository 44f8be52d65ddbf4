"""cloudflared-compatible credentials files and tokens."""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from pathlib import Path

import pytest

from burrow.connector.credentials import (
    TunnelCredentials,
    decode_token,
    encode_token,
    generate_tunnel_secret,
    load_credentials_file,
    new_account_tag,
    write_credentials_file,
)
from burrow.errors import ConfigError

SECRET = bytes(range(1, 33))
TID = uuid.UUID("6ff42ae2-765d-4adf-8112-31c55c1551ef")
TAG = "0123456789abcdef0123456789abcdef"
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _creds(**kw: object) -> TunnelCredentials:
    base: dict[str, object] = {"account_tag": TAG, "tunnel_secret": SECRET, "tunnel_id": TID}
    base.update(kw)
    return TunnelCredentials(**base)  # type: ignore[arg-type]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _file_json(**override: object) -> dict[str, object]:
    body: dict[str, object] = {
        "AccountTag": TAG,
        "TunnelSecret": _b64(SECRET),
        "TunnelID": str(TID),
        "Endpoint": "",
    }
    body.update(override)
    return body


def _token(obj: object) -> str:
    return _b64(json.dumps(obj).encode())


def test_generators() -> None:
    s1, s2 = generate_tunnel_secret(), generate_tunnel_secret()
    assert len(s1) == 32 and s1 != s2
    tag = new_account_tag()
    assert len(tag) == 32 and int(tag, 16) >= 0 and tag == tag.lower()
    assert new_account_tag() != tag


def test_repr_hides_secret() -> None:
    text = repr(_creds())
    assert "tunnel_secret" not in text and repr(SECRET) not in text and _b64(SECRET) not in text


# -- credentials file -------------------------------------------------------------------------


def test_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / f"{TID}.json"
    creds = _creds(endpoint="fed")
    write_credentials_file(path, creds)
    assert load_credentials_file(path) == creds
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    body = json.loads(path.read_text())
    assert body == {
        "AccountTag": TAG,
        "TunnelSecret": _b64(SECRET),
        "TunnelID": str(TID),
        "Endpoint": "fed",
    }
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_file_0600_from_creation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chmods: list[object] = []
    monkeypatch.setattr(os, "chmod", lambda *a, **k: chmods.append(a))
    old = os.umask(0)
    try:
        write_credentials_file(tmp_path / "c.json", _creds())
    finally:
        os.umask(old)
    assert chmods == []
    assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o600


def test_file_overwrite_is_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("old")
    os.chmod(path, 0o644)
    write_credentials_file(path, _creds())
    assert load_credentials_file(path).tunnel_id == TID
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot write credentials file"):
        write_credentials_file(tmp_path / "nope" / "c.json", _creds())


def test_load_cloudflared_file_without_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    body = _file_json()
    del body["Endpoint"]
    body["TunnelName"] = "ignored"  # cloudflared's test fixtures carry extra keys
    path.write_text(json.dumps(body))
    creds = load_credentials_file(path)
    assert creds == _creds()


def _write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "c.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("   \n", "is empty"),
        (json.dumps(_file_json())[:40], "truncated"),
        ("{not json}", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8|not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"AccountTag": TAG}), "missing field.*'TunnelSecret'.*'TunnelID'"),
        (json.dumps(_file_json(AccountTag=7)), "'AccountTag' is not a string"),
        (json.dumps(_file_json(AccountTag="  ")), "'AccountTag' is empty"),
        (json.dumps(_file_json(TunnelSecret="not base64!")), "'TunnelSecret' is not valid"),
        (json.dumps(_file_json(TunnelSecret=_b64(b"short"))), "decodes to 5 bytes"),
        (json.dumps(_file_json(TunnelSecret=None)), "'TunnelSecret' is missing"),
        (json.dumps(_file_json(TunnelID="not-a-uuid")), "'TunnelID' is not a UUID"),
        (json.dumps(_file_json(Endpoint=3)), "'Endpoint' is not a string"),
    ],
)
def test_load_malformed_file(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(ConfigError, match=message) as info:
        load_credentials_file(path)
    assert str(path) in str(info.value)
    assert _b64(SECRET) not in str(info.value)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_credentials_file(tmp_path / "missing.json")


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_credentials_file(tmp_path)


# -- token ------------------------------------------------------------------------------------


def test_token_round_trip_plain() -> None:
    creds = _creds()
    token = encode_token(creds)
    assert json.loads(base64.b64decode(token, validate=True)) == {
        "a": TAG,
        "s": _b64(SECRET),
        "t": str(TID),
    }
    assert decode_token(token) == creds


def test_token_round_trip_with_extras() -> None:
    creds = _creds(endpoint="fed", edge=("edge.example.com:7844", "[::1]:7845"), ca_pem=CA)
    token = encode_token(creds)
    body = json.loads(base64.b64decode(token))
    # cloudflared decodes "e" as a string (its Endpoint); burrow's extras use other keys.
    assert body["e"] == "fed"
    assert body["be"] == ["edge.example.com:7844", "[::1]:7845"]
    assert body["bc"] == CA
    assert decode_token(token) == creds
    assert decode_token(f"  {token}\n") == creds


def test_decode_cloudflared_token() -> None:
    # The shape `cloudflared tunnel token` prints (keys in Go struct order, no extras).
    token = _token({"a": TAG, "t": str(TID), "s": _b64(SECRET)})
    creds = decode_token(token)
    assert creds == _creds()
    assert creds.edge == () and creds.ca_pem is None and creds.endpoint == ""


def test_decode_token_tolerates_missing_padding_and_unknown_keys() -> None:
    token = _token({"a": TAG, "s": _b64(SECRET), "t": str(TID), "zz": 1}).rstrip("=")
    assert decode_token(token) == _creds()


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("not*base64", "not valid base64"),
        (_b64(b"\x00\x01binary"), "does not decode to JSON"),
        (_token({"a": TAG, "s": _b64(SECRET), "t": str(TID)})[:30], "base64|JSON"),
        (_token([1, 2]), "expected a JSON object"),
        (_token({"a": TAG, "s": _b64(SECRET)}), "missing field.*'t'"),
        (_token({"s": _b64(SECRET), "t": str(TID)}), "missing field.*'a'"),
        (_token({"a": TAG, "s": 5, "t": str(TID)}), "'s' is not a string"),
        (_token({"a": TAG, "s": "%%%", "t": str(TID)}), "'s' is not valid standard base64"),
        (_token({"a": TAG, "s": _b64(b"x" * 8), "t": str(TID)}), "decodes to 8 bytes"),
        (_token({"a": TAG, "s": _b64(SECRET), "t": "nope"}), "'t' is not a UUID"),
        (_token({"a": "", "s": _b64(SECRET), "t": str(TID)}), "'a' is empty"),
        (_token({"a": TAG, "s": _b64(SECRET), "t": str(TID), "e": ["x:1"]}), "'e' is not"),
        (_token({"a": TAG, "s": _b64(SECRET), "t": str(TID), "be": "x:1"}), "'be' is not"),
        (_token({"a": TAG, "s": _b64(SECRET), "t": str(TID), "be": ["nohost"]}), "'be'"),
        (_token({"a": TAG, "s": _b64(SECRET), "t": str(TID), "be": ["h:99999"]}), "'be'"),
        (_token({"a": TAG, "s": _b64(SECRET), "t": str(TID), "bc": "junk"}), "'bc' is not a PEM"),
    ],
)
def test_decode_malformed_token(token: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        decode_token(token)
    assert _b64(SECRET) not in str(info.value)
