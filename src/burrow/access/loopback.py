"""`localhost` and names under `.localhost` are loopback (RFC 6761), as curl and browsers treat
them, so local demos and tests need no DNS. burrow's own clients resolve them this way.

aiohttp is imported only when a resolver is asked for: `burrow access ssh` (a ProxyCommand,
started for every ssh) must stay light.
"""

from __future__ import annotations

import functools
import socket
from typing import Any


def is_loopback_name(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host == "localhost" or host.endswith(".localhost")


@functools.cache
def _resolver_class() -> type[Any]:
    import aiohttp
    from aiohttp.abc import AbstractResolver, ResolveResult

    class LoopbackResolver(AbstractResolver):
        """`.localhost` names go to 127.0.0.1, everything else to the system resolver."""

        def __init__(self) -> None:
            self._system = aiohttp.ThreadedResolver()

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            if is_loopback_name(host):
                return [
                    ResolveResult(
                        hostname=host,
                        host="127.0.0.1",
                        port=port,
                        family=socket.AF_INET,
                        proto=0,
                        flags=socket.AI_NUMERICHOST,
                    )
                ]
            return await self._system.resolve(host, port, family)

        async def close(self) -> None:
            await self._system.close()

    return LoopbackResolver


def loopback_resolver() -> Any:
    """An aiohttp resolver that treats `.localhost` names as loopback."""
    return _resolver_class()()
