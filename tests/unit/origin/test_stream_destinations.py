"""Where a stream goes: cloudflared's bastion destination rules and host:port splitting."""

from __future__ import annotations

import pytest

from burrow.origin.stream import DestinationError, bastion_destination, split_destination


@pytest.mark.parametrize(
    ("value", "dest"),
    [
        (b"10.0.0.5:22", "10.0.0.5:22"),
        (b"ssh://db.internal:2222/some/path", "db.internal:2222"),
        (b"db.internal:5432/x", "db.internal:5432"),
        (b"[::1]:22", "[::1]:22"),
    ],
)
def test_bastion_destination(value: bytes, dest: str) -> None:
    assert bastion_destination([(b"cf-access-jump-destination", value)]) == dest


def test_bastion_without_destination_is_refused() -> None:
    with pytest.raises(DestinationError, match="--destination flag"):
        bastion_destination([(b"host", b"x")])


def test_split_destination() -> None:
    assert split_destination("127.0.0.1:22") == ("127.0.0.1", 22)
    assert split_destination("[::1]:8080") == ("::1", 8080)
    assert split_destination("example.com", 22) == ("example.com", 22)
    for bad in ("example.com", "h:0", "h:99999", "h:x", "[::1", ":22"):
        with pytest.raises(DestinationError):
            split_destination(bad)
