"""Locating the shared conformance data recorded from the real cloudflared (shared/conformance,
beside the repository, or BURROW_SHARED_DIR).

Outside CI a missing file skips the tests that need it. In CI (`CI` set) the data is always laid
beside the clone, so a missing file is an error: conformance checks must not pass by skipping.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

_REPO = Path(__file__).resolve().parents[3]


def shared_path(*parts: str) -> Path:
    env = os.environ.get("BURROW_SHARED_DIR")
    base = Path(env) if env else _REPO.parent / "shared"
    return base.joinpath(*parts)


def require_shared_file(*parts: str) -> Path:
    """The file under shared/, or a skip (a failure in CI) when it is missing."""
    path = shared_path(*parts)
    if not path.is_file():
        message = f"shared data {path} not found"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI lays shared/ beside the clone)")
        pytest.skip(message)
    return path


def conformance_path(name: str) -> Path:
    return shared_path("conformance", name)


def load_conformance(name: str) -> Any:
    """The parsed JSON file under shared/conformance (skip, or fail in CI, when missing)."""
    return json.loads(require_shared_file("conformance", name).read_text())
