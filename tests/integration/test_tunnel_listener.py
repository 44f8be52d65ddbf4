"""The edge's tunnel listener: handshake rate limits, registration refusals, deletion."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid

import pytest

from burrow.connector.supervisor import Connector, ConnectorConfig
from burrow.errors import RegistrationError
from burrow.ingress.rules import Ingress
from burrow.testing.harness import provision, start_connector, start_edge


async def test_handshakes_are_rate_limited_per_source(tmp_path) -> None:
    edge = await start_edge(tmp_path, handshake_rate=0.01, handshake_burst=3)
    host, port = edge.tunnel_addresses[0]
    try:
        conns = [await asyncio.open_connection(host, port) for _ in range(8)]
        closed = 0
        for reader, _ in conns:
            try:
                data = await asyncio.wait_for(reader.read(1), 0.5)
                closed += data == b""
            except TimeoutError:
                pass  # admitted: the server waits for our ClientHello
            except ConnectionResetError:
                closed += 1
        for _, writer in conns:
            writer.close()
        assert closed == 5
    finally:
        await edge.stop(grace=0)


async def _run_until_refused(made, caplog) -> RegistrationError:
    connector = Connector(
        ConnectorConfig(
            credentials=made.credentials, ingress=Ingress.single(None), ha_connections=1
        )
    )
    with pytest.raises(RegistrationError) as info:
        await asyncio.wait_for(connector.run(), 10)
    await connector.stop(grace=0)
    return info.value


async def test_wrong_secret_is_a_permanent_refusal_and_not_logged(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    edge = await start_edge(tmp_path)
    try:
        made = await provision(edge)
        bad_secret = bytes(32)
        bad = dataclasses.replace(
            made, credentials=dataclasses.replace(made.credentials, tunnel_secret=bad_secret)
        )
        exc = await _run_until_refused(bad, caplog)
        assert not exc.retryable
        assert "does not match" in exc.cause
        assert "nauthorized" not in exc.cause  # cloudflared would retry in a tight loop
        log_text = caplog.text
        assert "registration refused" in log_text
        assert made.credentials.tunnel_secret.hex() not in log_text
        import base64

        assert base64.b64encode(made.credentials.tunnel_secret).decode() not in log_text
    finally:
        await edge.stop(grace=0)


async def test_unknown_tunnel_is_refused(tmp_path, caplog) -> None:
    edge = await start_edge(tmp_path)
    try:
        made = await provision(edge)
        ghost = dataclasses.replace(
            made, credentials=dataclasses.replace(made.credentials, tunnel_id=uuid.uuid4())
        )
        exc = await _run_until_refused(ghost, caplog)
        assert not exc.retryable and "does not exist" in exc.cause
    finally:
        await edge.stop(grace=0)


async def test_deleting_a_tunnel_drops_its_connections(tmp_path) -> None:
    edge = await start_edge(tmp_path)
    try:
        made = await provision(edge)
        connector = await start_connector(made, Ingress.single(None))
        assert len(edge.registry.connections(made.tunnel.id)) == 1
        assert edge.store is not None
        await edge.store.delete_tunnel(made.tunnel.id)
        for _ in range(50):
            if not edge.registry.connections(made.tunnel.id):
                break
            await asyncio.sleep(0.1)
        assert not edge.registry.connections(made.tunnel.id)
        await connector.stop(grace=0)
    finally:
        await edge.stop(grace=0)
