"""Profiling the edge and connector under load with py-spy (sampling; no change to src/).

`record()` runs `py-spy record --format raw` against a PID for a fixed time; `summarize()`
reads the collapsed stacks and ranks functions by self time, inclusive time and source file,
which is what points at the hot spots of the data path.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
from pathlib import Path

# Entry frames (CLI, event-loop runner, thread bootstrap) are in every stack: they say nothing
# about the data path, so the inclusive ranking leaves them out.
_ENTRY = (
    "typer/",
    "click/",
    "burrow/cli/",
    "asyncio/runners.py",
    "uvloop/__init__.py",
    "threading.py",
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def available() -> str | None:
    """None when py-spy can be used, else the reason it cannot."""
    if shutil.which("py-spy") is None:
        return "py-spy is not installed (pip install py-spy)"
    return None


def record(
    pid: int, seconds: int, out: Path, rate: int = 250, native: bool = False
) -> subprocess.Popen[bytes]:
    """Start sampling `pid` for `seconds` into `out` (collapsed stacks); the caller waits.
    `native` adds C frames (uvloop, ssl, hpack's C parts), at a higher sampling cost."""
    return subprocess.Popen(
        [
            "py-spy", "record", "-p", str(pid), "-d", str(seconds), "-r", str(rate),
            "--function", "--format", "raw", "-o", str(out), *(["--native"] if native else []),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _short(path: str) -> str:
    for marker in ("site-packages/", "/src/", "lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "lib/python3." else tail
    return path


def _label(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame)
    if not m:
        return frame, frame
    file = _short(m.group("file"))
    return f"{file}:{m.group('func')}", file


def summarize(path: Path, top: int = 15) -> dict[str, object]:
    """Self/inclusive percentages per function and self percentages per file."""
    self_fn: collections.Counter[str] = collections.Counter()
    incl_fn: collections.Counter[str] = collections.Counter()
    self_file: collections.Counter[str] = collections.Counter()
    by_thread: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [
            _label(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        # Stacks rooted in threading.py are worker threads (e.g. aiosqlite's). py-spy counts a
        # thread blocked in SimpleQueue.get as active although /proc shows it uses no CPU, so
        # they are reported apart and the rankings cover the event-loop thread only.
        worker = frames[0][1] == "threading.py"
        by_thread["worker threads" if worker else "main thread"] += count
        if worker:
            continue
        total += count
        leaf_fn, leaf_file = frames[-1]
        self_fn[leaf_fn] += count
        self_file[leaf_file] += count
        for fn, file in set(frames):
            if not file.startswith(_ENTRY) and ":<module>" not in fn:
                incl_fn[fn] += count

    def pct(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return (
            [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)] if total else []
        )

    return {
        "samples": total,
        "threads": dict(by_thread),
        "self": pct(self_fn),
        "inclusive": pct(incl_fn),
        "self_by_file": pct(self_file),
    }


def format_summary(name: str, s: dict[str, object]) -> str:
    lines = [
        f"== {name}: {s['samples']} main-thread samples (non-idle) ==",
        f"  samples by thread (rankings: main thread only): {s['threads']}",
    ]
    for title, key in (
        ("self %", "self"),
        ("inclusive %", "inclusive"),
        ("self % by file", "self_by_file"),
    ):
        lines.append(f"  -- {title}")
        for label, p in s[key]:  # type: ignore[attr-defined]
            lines.append(f"    {p:5.1f}  {label}")
    return "\n".join(lines)
