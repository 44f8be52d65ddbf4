"""An eyeball that opens and cancels streams as fast as it can (HTTP/2 "rapid reset",
CVE-2023-44487) is cut off with GOAWAY ENHANCE_YOUR_CALM; other eyeballs keep being served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import h2.errors
import h2.events

from burrow.edge.public_h2 import RESET_BURST
from burrow.testing.frontdoor import curl, edge_stack, h2_eyeball


async def test_rapid_reset_gets_goaway_and_others_are_served(tmp_path: Path) -> None:
    async with edge_stack(tmp_path, https_listen=["127.0.0.1:0"]) as (edge, _seen):
        reader, writer, conn, headers = await h2_eyeball(edge, path="/slow?delay=1")
        goaway: h2.events.ConnectionTerminated | None = None
        sent = 0
        async with asyncio.timeout(20):
            while goaway is None and sent < RESET_BURST * 10:
                for _ in range(50):
                    stream_id = conn.get_next_available_stream_id()
                    conn.send_headers(stream_id, headers, end_stream=True)
                    conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                    sent += 1
                writer.write(conn.data_to_send())
                await writer.drain()
                # Read what the edge sent so far without waiting for more than a moment.
                try:
                    data = await asyncio.wait_for(reader.read(65536), 0.05)
                except TimeoutError:
                    continue
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        goaway = event
            while goaway is None:  # the GOAWAY may still be in flight
                data = await reader.read(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        goaway = event
        writer.close()
        assert goaway is not None, f"no GOAWAY after {sent} reset streams"
        assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert sent < RESET_BURST * 10
        # Another eyeball is unaffected.
        assert (await curl(edge, "app.localhost", "/echo", "--http2"))[:2] == ("2", 200)
