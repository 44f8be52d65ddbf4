from __future__ import annotations

import os
import stat

import pytest

from burrow.private_files import write_atomic


def test_written_with_mode_and_replaced_atomically(tmp_path) -> None:
    path = tmp_path / "key.pem"
    write_atomic(path, b"one")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_atomic(path, b"two", mode=0o644)
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["key.pem"]  # no temporary file left behind


def test_no_replace_refuses_an_existing_file(tmp_path) -> None:
    path = tmp_path / "seal.key"
    write_atomic(path, b"first", replace=False)
    with pytest.raises(FileExistsError):
        write_atomic(path, b"second", replace=False)
    assert path.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["seal.key"]


def test_a_symlinked_destination_directory_entry_is_replaced_not_followed(tmp_path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    link = tmp_path / "creds.json"
    link.symlink_to(target)
    write_atomic(link, b"new")
    assert target.read_bytes() == b"keep"
    assert not link.is_symlink() and link.read_bytes() == b"new"
