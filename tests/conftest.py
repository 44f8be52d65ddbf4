"""Fixtures shared by every test folder."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from burrow import runtime


@pytest.fixture
def rare_collections() -> Iterator[None]:
    """Collection thresholds like a tuned server's (`runtime.tune_gc`), high enough that no
    collection is triggered by allocation counts while the test runs; no closed connection
    noted yet."""
    old = gc.get_threshold()
    gc.collect()
    gc.set_threshold(1 << 30, 1 << 10, 1 << 10)
    runtime._closed_connections = 0
    try:
        yield
    finally:
        gc.set_threshold(*old)
