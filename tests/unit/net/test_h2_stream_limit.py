"""A client endpoint respects the peer's MAX_CONCURRENT_STREAMS (an h2 origin's limit): the
stream beyond it is refused locally with `StreamLimitError` (the h2 origin path answers 502),
and a slot is usable again once a stream finished."""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from burrow.net.h2conn import H2Endpoint, StreamLimitError
from burrow.testing.h2_memory import EndHandler, Sink

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"o"), (b":path", b"/")]


async def test_peer_stream_limit_is_respected() -> None:
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.local_settings = h2.settings.Settings(
        client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1}
    )
    server.initiate_connection()
    client, transport = H2Endpoint(client_side=True), Sink()
    client.connection_made(transport)
    client.data_received(server.data_to_send())  # the server's SETTINGS: one stream at a time
    first = EndHandler()
    stream = client.open_stream(REQUEST, first, end_stream=True)
    with pytest.raises(StreamLimitError):
        client.open_stream(REQUEST, EndHandler(), end_stream=True)
    # The origin answers the first request; its slot frees up.
    await asyncio.sleep(0)  # the scheduled flush writes the request
    server.receive_data(transport.take())
    server.send_headers(stream.id, [(":status", "204")], end_stream=True)
    client.data_received(server.data_to_send())
    assert first.ended and first.reset_code is None and not client.streams
    assert client.open_stream(REQUEST, EndHandler(), end_stream=True).id == stream.id + 2
