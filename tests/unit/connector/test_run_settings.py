"""`tunnel run` settings from the config file: unknown keys, flag > file > default, and the
`<tunnel-UUID>.json` credentials lookup."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from burrow.connector.settings import (
    as_seconds,
    find_credentials_file,
    pick,
    unknown_keys,
    unknown_keys_warning,
)
from burrow.errors import ConfigError


def test_unknown_keys_are_reported_and_cloudflared_keys_are_not() -> None:
    raw = {
        "tunnel": "x",
        "credentials-file": "c.json",
        "ingress": [],
        "originRequest": {},
        "warp-routing": {},
        "metrics": "localhost:2000",
        "loglevel": "debug",
        "logfile": "f",
        "protocol": "http2",
        "ha-connections": 2,
        "grace-period": "30s",
        "edge": ["a:1"],
        "origin-ca-pool": "ca.pem",
        "no-autoupdate": True,
        "ha-conections": 3,
        "lgolevel": "x",
    }
    assert unknown_keys(raw) == ["ha-conections", "lgolevel"]
    warning = unknown_keys_warning(raw, "/etc/cloudflared/config.yml")
    assert warning is not None and "ha-conections, lgolevel" in warning
    assert unknown_keys_warning({"tunnel": "x"}, "f") is None


def test_pick_and_durations() -> None:
    raw = {"protocol": "auto", "grace-period": "1m"}
    assert pick("http2", raw, "protocol", "x") == "http2"  # flag (or env) wins
    assert pick(None, raw, "protocol", "http2") == "auto"  # then the file
    assert pick(None, raw, "loglevel", "info") == "info"  # then the default
    assert as_seconds(raw["grace-period"], "grace-period") == 60.0
    assert as_seconds(5, "grace-period") == 5.0
    with pytest.raises(ConfigError, match="unknown unit"):
        as_seconds("5 parsecs", "grace-period")


def test_credentials_found_next_to_the_config(tmp_path: Path) -> None:
    tunnel = uuid.uuid4()
    config = tmp_path / "config.yml"
    assert find_credentials_file(str(tunnel), str(config)) is None
    creds = tmp_path / f"{tunnel}.json"
    creds.write_text("{}")
    assert find_credentials_file(str(tunnel), str(config)) == creds
    assert find_credentials_file("my-tunnel-name", str(config)) is None
