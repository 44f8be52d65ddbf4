"""Remote configuration at the edge (PROTOCOL.md 3.4): tunnels whose ingress an administrator
manages on the edge (`burrow edge tunnel ingress set`) are registered with
`tunnelIsRemotelyManaged=true`, and each of their connections gets an `update-configuration`
stream with the current version when it registers and whenever the configuration changes.

Connectors (burrow's and cloudflared's) ignore versions they already have, so pushing the same
version twice is harmless.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from burrow.net.h2conn import DataPiece, H2Endpoint, H2Stream, Headers
from burrow.store.sqlalchemy_store import SQLStore
from burrow.store.tunnel_configs import TunnelConfig, all_tunnel_configs

log = logging.getLogger("burrow.edge.config")

MAX_RESPONSE = 64 << 10
PUSH_TIMEOUT = 10.0

PushResult = tuple[int, str | None]


def push_headers() -> Headers:
    return [
        (b":method", b"PUT"),
        (b":scheme", b"https"),
        (b":authority", b"cftunnel.com"),
        (b":path", b"/"),
        (b"cf-cloudflared-proxy-connection-upgrade", b"update-configuration"),
        (b"content-type", b"application/json"),
    ]


class _PushHandler:
    """StreamHandler for one push: collects `{"lastAppliedVersion": N, "err": ...}`."""

    def __init__(self, result: asyncio.Future[PushResult]) -> None:
        self.result = result
        self.status = 0
        self.body = bytearray()

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        for name, value in headers:
            if name == b":status":
                self.status = int(value)
        if end_stream:
            self._finish()

    def on_data(self, stream: H2Stream, data: DataPiece, end_stream: bool) -> None:
        stream.consumed(len(data))
        if len(self.body) + len(data) <= MAX_RESPONSE:
            self.body += data
        if end_stream:
            self._finish()

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        self._finish()

    def on_end(self, stream: H2Stream) -> None:
        self._finish()

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        if not self.result.done():
            self.result.set_exception(ConnectionError(f"push stream reset ({error_code})"))

    def on_writable(self, stream: H2Stream) -> None:
        pass

    def _finish(self) -> None:
        if self.result.done():
            return
        if self.status != 200:
            self.result.set_exception(ConnectionError(f"connector answered {self.status}"))
            return
        try:
            doc = json.loads(self.body)
            version = int(doc.get("lastAppliedVersion", -1))
            err = doc.get("err")
        except (ValueError, AttributeError, TypeError) as exc:
            self.result.set_exception(ConnectionError(f"bad push response: {exc}"))
            return
        self.result.set_result((version, describe_push_error(err)))


def describe_push_error(err: Any) -> str | None:
    """The `err` of a push response as text, None for success.

    cloudflared marshals a Go `error` with encoding/json, which gives only the exported fields
    of its concrete type: `{}` for `errors.New`/`fmt.Errorf` errors (ingress validation), or a
    struct such as strconv.NumError `{"Func": "ParseInt", "Num": "\"10s\"", "Err": {}}`. A
    non-empty error of any JSON type is a failure; render structures as compact JSON.
    """
    if err is None or err == "" or err is False:
        return None
    if isinstance(err, str):
        return err
    if err == {}:
        return "the connector reported an error without details (see its log)"
    return json.dumps(err, sort_keys=True, separators=(",", ":"))


def push_configuration(conn: H2Endpoint, config: TunnelConfig) -> asyncio.Future[PushResult]:
    """Open an `update-configuration` stream on a tunnel connection."""
    result: asyncio.Future[PushResult] = asyncio.get_running_loop().create_future()
    stream = conn.open_stream(push_headers(), _PushHandler(result))
    stream.write(config.push_body())
    stream.end()
    return result


class RemoteConfigs:
    """The edge's view of remotely managed tunnels, refreshed with the routing snapshot."""

    def __init__(self) -> None:
        self.configs: dict[uuid.UUID, TunnelConfig] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def managed(self, tunnel_id: uuid.UUID) -> bool:
        return tunnel_id in self.configs

    async def refresh(self, store: SQLStore) -> list[TunnelConfig]:
        """Re-read every config; returns those that are new or changed."""
        fresh = await all_tunnel_configs(store)
        changed = [
            c
            for t, c in fresh.items()
            if (old := self.configs.get(t)) is None or old.version != c.version
        ]
        self.configs = fresh
        return changed

    def push_to(self, conn: Any, config: TunnelConfig | None = None) -> None:
        """Push the tunnel's current config to one registered connection (in the background)."""
        config = config or self.configs.get(conn.tunnel_id)
        if config is None or conn.closed:
            return
        task = asyncio.get_running_loop().create_task(self._push(conn, config))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push(self, conn: Any, config: TunnelConfig) -> None:
        try:
            version, err = await asyncio.wait_for(push_configuration(conn, config), PUSH_TIMEOUT)
        except (ConnectionError, TimeoutError) as exc:
            log.warning(
                "configuration push (version %d) to tunnel %s connection %s failed: %s",
                config.version,
                config.tunnel_id,
                getattr(conn, "connection_id", "?"),
                exc or type(exc).__name__,
            )
            return
        if err is not None:
            log.warning(
                "connector of tunnel %s rejected configuration version %d (keeps %d): %s",
                config.tunnel_id,
                config.version,
                version,
                err,
            )
        else:
            log.info(
                "tunnel %s connection %s applied configuration version %d",
                config.tunnel_id,
                getattr(conn, "connection_id", "?"),
                version,
            )

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
