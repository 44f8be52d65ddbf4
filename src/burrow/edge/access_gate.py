"""Access enforcement in the edge's public listeners (HTTP/1.1 and HTTP/2).

Each listener makes one call after the host is normalised and the limits/WAF gate passed, before
the request is routed to a tunnel: `AccessGate.http1(...)` / `AccessGate.h2(...)`. The answer is
the path to forward (the normalised path when an app matched: the path the policy checked is
the path the origin sees), or None when the gate answered the request itself (a redirect to
login, 401, 403, or a `/cdn-cgi/access/*` endpoint). WebSocket upgrades (and TCP carried over
WebSocket) are ordinary requests here, so they pass the same check.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from burrow.access.service import MAX_BODY, AccessRequest, AccessService, Forward, Reply
from burrow.net.h2conn import DataPiece, H2Stream, Headers
from burrow.wire import http1

if TYPE_CHECKING:
    from burrow.edge.public import EyeballProtocol
    from burrow.edge.public_h2 import H2EyeballConnection

log = logging.getLogger("burrow.edge.access")


def _apply(forward: Forward, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out = [(n, v) for n, v in headers if n not in forward.strip]
    out.extend(forward.add)
    return out


class AccessGate:
    def __init__(self, service: AccessService) -> None:
        self.service = service
        self._respond: list[tuple[bytes, bytes]] = []

    def take_response_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers the last forwarded request's response must carry (the listener creates its
        exchange synchronously after `http1`/`h2` returned, so nothing can come between)."""
        out, self._respond = self._respond, []
        return out

    # -- HTTP/1.1 -------------------------------------------------------------------------

    def http1(
        self, proto: EyeballProtocol, head: http1.RequestHead, host: str, path: bytes, ray: str
    ) -> bytes | None:
        service = self.service
        snap = service.snapshot
        if self._respond:
            self._respond = []
        if not snap.apps and host != service.team_domain:
            return path  # nothing protected on this edge: no per-request cost
        authority = (head.host or host.encode()).decode("latin-1").strip()
        req = AccessRequest(
            method=head.method.decode("latin-1"),
            host=host,
            authority=authority,
            scheme=proto.scheme_b.decode(),
            target=path.decode("latin-1"),
            headers=head.headers,
            ip=proto.client_ip_b.decode(),
        )
        verdict = service.check(req)
        if verdict is None:
            return path
        if type(verdict) is Forward:
            head.headers = _apply(verdict, head.headers)
            self._respond = verdict.respond
            return verdict.path
        local = LocalExchange(proto, head, host, ray, req, service, verdict)
        proto.current = cast(Any, local)
        if head.upgrade is not None:
            # An upgrade request's bytes after the head belong to the new protocol: no
            # EndOfMessage will come. Answer (and close) without waiting for one.
            asyncio.get_running_loop().call_soon(local.request_end)
        return None

    # -- HTTP/2 ---------------------------------------------------------------------------

    def h2(
        self,
        owner: H2EyeballConnection,
        stream: H2Stream,
        method: bytes,
        path: bytes,
        host: str,
        authority: bytes,
        headers: Headers,
        end_stream: bool,
    ) -> bytes | None:
        """As `http1`; `headers` (the regular request headers) are changed in place."""
        service = self.service
        if self._respond:
            self._respond = []
        if not service.snapshot.apps and host != service.team_domain:
            return path
        req = AccessRequest(
            method=method.decode("latin-1"),
            host=host,
            authority=(authority or host.encode()).decode("latin-1"),
            scheme="https",
            target=path.decode("latin-1"),
            headers=headers,
            ip=owner.ip,
        )
        verdict = service.check(req)
        if verdict is None:
            return path
        if type(verdict) is Forward:
            headers[:] = _apply(verdict, headers)
            self._respond = verdict.respond
            return verdict.path
        collector = _H2Local(stream, req, service, verdict)
        stream.handler = collector
        if end_stream:
            collector.run()
        return None


class LocalExchange:
    """Stands in for an `Exchange` on an HTTP/1.1 eyeball connection while the edge itself
    answers: collects a (bounded) body, then writes the access answer and hands the connection
    back for the next request."""

    def __init__(
        self,
        proto: EyeballProtocol,
        head: http1.RequestHead,
        host: str,
        ray: str,
        req: AccessRequest,
        service: AccessService,
        verdict: object,
    ) -> None:
        self.proto = proto
        self.head = head
        self.host = host
        self.ray = ray
        self.req = req
        self.service = service
        self.verdict = verdict
        self.request_done = False
        self.response_started = False
        self.websocket = False
        self._body = bytearray()
        self._too_large = False
        self._task: asyncio.Task[None] | None = None

    def request_data(self, data: DataPiece) -> None:
        if len(self._body) + len(data) > MAX_BODY:
            self._too_large = True
            return
        self._body += data

    def request_end(self) -> None:
        if self.request_done:
            return
        self.request_done = True
        if self._too_large:
            self._write(
                Reply.page(413, "Payload too large", "<p>Login forms are small.</p>"), close=True
            )
            return
        if type(self.verdict) is Reply:
            close = not self.head.keep_alive or self.head.upgrade is not None
            self._write(self.verdict, close=close)
            return
        self.req.body = bytes(self._body)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            reply = await self.service.endpoint(self.req)
        except Exception:  # pragma: no cover - endpoint() answers its own errors
            log.exception("access endpoint failed")
            reply = Reply.page(500, "Access error", "<p>The login service failed.</p>")
        self._write(reply, close=not self.head.keep_alive or self.head.upgrade is not None)

    def _write(self, reply: Reply, *, close: bool) -> None:
        proto = self.proto
        if (
            proto.current is not cast(Any, self) and proto.raw is not cast(Any, self)
        ) or proto.closing:
            return
        self.response_started = True
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in reply.headers]
        headers += [
            (b"Content-Length", str(len(reply.body)).encode()),
            (b"Cf-Ray", self.ray.encode()),
            (b"Server", b"burrow"),
        ]
        if close:
            headers.append((b"Connection", b"close"))
        body = b"" if self.head.method == b"HEAD" else reply.body
        proto.write(http1.serialize_response_head(reply.status, None, headers) + body)
        proto.exchange_done(cast(Any, self), close=close)

    def eyeball_closed(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def eyeball_drained(self) -> None:
        pass


class _H2Local:
    """The same for one HTTP/2 eyeball stream (StreamHandler)."""

    def __init__(
        self, stream: H2Stream, req: AccessRequest, service: AccessService, verdict: object
    ) -> None:
        self.stream = stream
        self.req = req
        self.service = service
        self.verdict = verdict
        self._body = bytearray()
        self._started = False

    def on_headers(self, stream: H2Stream, headers: Headers, end_stream: bool) -> None:
        if end_stream:
            self.run()

    def on_data(self, stream: H2Stream, data: DataPiece, end_stream: bool) -> None:
        stream.consumed(len(data))
        if len(self._body) + len(data) <= MAX_BODY:
            self._body += data
        if end_stream:
            self.run()

    def on_trailers(self, stream: H2Stream, headers: Headers) -> None:
        self.run()

    def on_end(self, stream: H2Stream) -> None:
        self.run()

    def on_reset(self, stream: H2Stream, error_code: int) -> None:
        self._started = True

    def on_writable(self, stream: H2Stream) -> None:
        pass

    def run(self) -> None:
        if self._started:
            return
        self._started = True
        if type(self.verdict) is Reply:
            self._send(self.verdict)
            return
        self.req.body = bytes(self._body)

        async def go() -> None:
            self._send(await self.service.endpoint(self.req))

        asyncio.get_running_loop().create_task(go())

    def _send(self, reply: Reply) -> None:
        stream = self.stream
        if stream.closed:
            return
        headers: Headers = [(b":status", str(reply.status).encode())]
        headers += [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in reply.headers]
        headers += [(b"content-length", str(len(reply.body)).encode()), (b"server", b"burrow")]
        stream.handler = None
        stream.send_headers(headers, end_stream=not reply.body)
        if reply.body:
            stream.write(reply.body)
            stream.end()


def start_access(store: Any, state_dir: Any, team_domain: str) -> AccessService:
    """The edge's access service on its store; private keys and IdP secrets are sealed with the
    edge's `seal.key` (the same key the admin API uses for tunnel secrets)."""
    from burrow.store.access_store import AccessStore
    from burrow.store.sealing import SecretBox

    return AccessService(
        AccessStore(store, SecretBox.load_or_create(state_dir)), team_domain=team_domain
    )
