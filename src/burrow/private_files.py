"""Writing files that hold secrets or state: atomically, and with their final mode from the
moment they exist (a key is never readable by others, not even briefly)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, replace: bool = True) -> None:
    """Write `data` to a temporary file beside `path` (created with `mode`, never following a
    symlink), fsync it, then move it into place.

    `replace=False` refuses to replace an existing file (FileExistsError), so two processes
    creating the same key cannot overwrite each other. Raises OSError; callers add context.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
