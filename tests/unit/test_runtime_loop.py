"""`run_async` picks uvloop when installed, and the standard loop with BURROW_LOOP=asyncio."""

from __future__ import annotations

import asyncio

import pytest

from burrow.runtime import run_async


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_burrow_loop_asyncio_selects_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BURROW_LOOP", "asyncio")
    assert run_async(_loop_module()).startswith("asyncio")


def test_uvloop_by_default_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv("BURROW_LOOP", raising=False)
    assert run_async(_loop_module()).startswith("uvloop")
