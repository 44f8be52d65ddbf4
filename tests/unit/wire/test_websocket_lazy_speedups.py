"""The connector imports `websockets` (for its C unmasking) on the first masked frame only."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import burrow.connector.supervisor, burrow.origin.stream
from burrow.wire import websocket as ws
assert "websockets" not in sys.modules, "imported before any WebSocket"
assert ws.apply_mask(b"abcdefgh", b"\\x01\\x02\\x03\\x04") == b"````dddl"
assert "websockets.speedups" in sys.modules
assert type(ws._apply_mask).__name__ == "builtin_function_or_method"  # the C helper
assert ws.apply_mask(b"````dddl", b"\\x01\\x02\\x03\\x04") == b"abcdefgh"
"""


def test_websockets_loaded_on_first_unmask_and_the_c_helper_is_used() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
