"""The test tree has no __init__.py files, so pytest imports test modules by basename: two
test files with the same name in different folders break collection of the whole suite."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique() -> None:
    names = Counter(
        p.name
        for p in TESTS.rglob("*.py")
        if "node_modules" not in p.parts and p.name != "conftest.py"
    )
    assert [n for n, c in names.items() if c > 1] == []
