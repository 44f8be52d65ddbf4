"""TLS toward origins: the system trust store by default, plus `caPool` / `--origin-ca-pool`;
`noTLSVerify` turns verification off (an explicit, per-rule opt-out, as in cloudflared)."""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from burrow.errors import ConfigError


def origin_context(extra_ca: Sequence[str] = (), *, verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    for path in extra_ca:
        try:
            ctx.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load origin CA pool {path}: {exc}") from None
    return ctx
