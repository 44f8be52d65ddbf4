"""End-to-end fixtures: burrow as a user runs it, every component its own process.

See e2e_world.py for the machinery; every process started for a test is killed by its PID at
teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_world import CURL, E2E, HERE, wait_until


@pytest.fixture(scope="session")
def origin_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The real test origin, in its own process for the whole session."""
    if CURL is None:
        pytest.skip("curl is not installed (needed by the e2e tests)")
    log = tmp_path_factory.mktemp("origin") / "origin.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "origin_server.py")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        line = wait_until(
            lambda: proc.poll() is None and log.read_text().strip(), 20, what="the origin"
        )
        yield int(line.split()[0])
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture
def e2e(tmp_path: Path, origin_port: int) -> Iterator[E2E]:
    world = E2E(tmp_path, origin_port)
    try:
        yield world
    finally:
        world.cleanup()
