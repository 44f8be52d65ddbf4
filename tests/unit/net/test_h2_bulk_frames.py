"""H2Endpoint's output (DATA payloads written as separate buffers, zero-copy splits at the flow
control window) and input (frame bodies parsed from a view of the receive buffer) against the
reference `h2` state machine, with reads cut at arbitrary byte boundaries."""

from __future__ import annotations

import asyncio
import os
import random

import h2.config
import h2.connection
import h2.events

from burrow.net.h2conn import H2Endpoint, H2Stream, Headers
from burrow.testing.h2_memory import Sink


class Collect:
    def __init__(self) -> None:
        self.body = bytearray()
        self.ended = False

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        pass

    def on_data(self, stream: H2Stream, data: bytes, end_stream: bool) -> None:
        stream.consumed(len(data))
        self.body += data
        self.ended = self.ended or end_stream

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        self.ended = True

    def on_end(self, stream: H2Stream) -> None:
        self.ended = True

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        raise AssertionError("reset")

    def on_writable(self, stream: H2Stream) -> None:
        pass


class Server(H2Endpoint):
    def __init__(self, body: bytes) -> None:
        super().__init__(client_side=False, validate_inbound_headers=False)
        self.body = body
        self.upload = Collect()

    def on_request(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        stream = self.adopt_stream(stream_id, self.upload)
        stream.send_headers([(b":status", b"200")])
        stream.write(self.body)  # one buffer larger than the window and the frame size
        stream.end()


def _feed_in_pieces(endpoint: H2Endpoint, data: bytes, rnd: random.Random) -> None:
    pos = 0
    while pos < len(data):
        n = rnd.choice([1, 9, 10, 1000, 65536, 300_000])
        endpoint.data_received(data[pos : pos + n])
        pos += n


async def test_bulk_both_ways_against_reference_h2() -> None:
    rnd = random.Random(3)
    download = os.urandom(3 * (1 << 20) + 12345)
    upload = os.urandom(2 * (1 << 20) + 777)
    server, transport = Server(download), Sink()
    server.connection_made(transport)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.increment_flow_control_window(32 << 20)
    client.send_headers(
        1, [(":method", "POST"), (":scheme", "https"), (":authority", "t"), (":path", "/")]
    )
    received = bytearray()
    sent = 0
    ended = False
    for _ in range(1000):
        # Client -> server: as much of the upload as the window allows, cut into odd reads.
        window = client.local_flow_control_window(1)
        while sent < len(upload) and window > 0:
            n = min(window, client.max_outbound_frame_size, len(upload) - sent)
            client.send_data(1, upload[sent : sent + n], end_stream=sent + n == len(upload))
            sent += n
            window = client.local_flow_control_window(1)
        _feed_in_pieces(server, client.data_to_send(), rnd)
        await asyncio.sleep(0)  # scheduled flushes (returned credit) run
        server._flush_now()
        # Server -> client.
        for event in client.receive_data(transport.take()):
            if isinstance(event, h2.events.DataReceived):
                received += event.data
                client.acknowledge_received_data(event.flow_controlled_length, 1)
            if isinstance(event, h2.events.StreamEnded):
                ended = True
        if ended and server.upload.ended:
            break
    assert bytes(received) == download
    assert bytes(server.upload.body) == upload
