"""Certificate work in a short-lived child process, so `cryptography` never loads into the edge.

`cryptography` (x509 + hazmat) costs a long-running process ~10 MB of RSS for as long as it
runs once imported, although the edge only needs it for moments: creating the CA and the
tunnel-listener certificate on first start (and reissuing them), and issuing a development
certificate the first time the HTTPS listener sees a routed name. At steady state the edge
only hands PEM files to the stdlib `ssl` module. So, as `burrow.store.migrate` does for
alembic, the edge runs that work in a child interpreter (`python -m burrow.pki.worker`):

- ``setup``: `EdgePKI.load_or_create` (create or check the CA and the tunnel certificate).
  Skipped when `EdgePKI.open_verified` already confirms the files, which is every start after
  the first one (until the leaf comes within 30 days of expiring or the names change).
- ``issue``: a server certificate for some names, signed by the edge CA; the PEMs (private key
  included) come back on the child's stdout, never through a file or the command line.

The request goes to the child on stdin (state directory, names); nothing is on the command
line. When `cryptography` is already loaded in this process anyway (ACME or Access in use, a
test suite, a CLI command), the work runs in-process: there is nothing to save.

Errors keep their wording: a `ConfigError` in the child comes back as the same `ConfigError`
(its message on stderr); a child that cannot run at all makes ``setup`` fall back to
in-process `load_or_create`, which raises whatever error it always did.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from burrow.errors import ConfigError
from burrow.pki.ca import EdgePKI, normalize_names
from burrow.runtime import run_child

log = logging.getLogger("burrow.pki")

#: Exit status of a child that refused the request with a ConfigError (message on stderr).
_CONFIG_ERROR = 3
#: A child that takes longer than this is killed (it normally needs well under a second).
CHILD_TIMEOUT = 60.0


def crypto_loaded() -> bool:
    """`cryptography`'s x509 layer is already in this process: a child would save nothing."""
    return "cryptography.x509" in sys.modules


class _ChildFailed(Exception):
    """The child could not do the work for a reason other than a ConfigError."""


async def _run_child(request: dict[str, Any]) -> bytes:
    try:
        status, out, err = await run_child(
            "burrow.pki.worker", stdin=json.dumps(request).encode(), limit_s=CHILD_TIMEOUT
        )
    except OSError as exc:
        raise _ChildFailed(f"cannot start {sys.executable}: {exc}") from None
    message = err.decode(errors="replace").strip()
    if status == _CONFIG_ERROR:
        raise ConfigError(message.splitlines()[-1] if message else "certificate work failed")
    if status != 0:
        raise _ChildFailed(message.splitlines()[-1] if message else f"exit {status}")
    return out


async def open_edge_pki(
    state_dir: Path, names: Sequence[str] = (), *, out_of_process: bool | None = None
) -> EdgePKI:
    """`EdgePKI.load_or_create(state_dir, names)` without loading `cryptography` here.

    `out_of_process`: None decides by `crypto_loaded()`; True always uses the child when the
    files need work; False works in-process (as before)."""
    pki = EdgePKI.open_verified(state_dir, names)
    if pki is not None:
        return pki
    if out_of_process is None:
        out_of_process = not crypto_loaded()
    if out_of_process:
        request = {"op": "setup", "state_dir": str(state_dir), "names": list(names)}
        try:
            await _run_child(request)
        except _ChildFailed as exc:
            log.debug("certificate setup in a child failed (doing it in-process): %s", exc)
        else:
            pki = EdgePKI.open_verified(state_dir, names)
            if pki is not None:
                return pki
    return EdgePKI.load_or_create(state_dir, names)


async def issue_server_cert(
    pki: EdgePKI, names: Sequence[str], *, out_of_process: bool | None = None
) -> tuple[bytes, bytes]:
    """`pki.issue_server_cert(names)` (same profile and validity), in a child unless
    `cryptography` is loaded here already. Returns ``(cert_pem, key_pem)``; raises
    ConfigError (the same message as in-process) or RuntimeError when no child could run."""
    if out_of_process is None:
        out_of_process = not crypto_loaded()
    if not out_of_process:
        return pki.issue_server_cert(names)
    if not normalize_names(names):
        raise ConfigError("a server certificate needs at least one name")
    request = {"op": "issue", "state_dir": str(pki.state_dir), "names": list(names)}
    try:
        out = await _run_child(request)
    except _ChildFailed as exc:
        raise RuntimeError(f"issuing a certificate in a child process failed: {exc}") from None
    try:
        answer = json.loads(out)
        return answer["cert"].encode("ascii"), answer["key"].encode("ascii")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RuntimeError(f"unexpected answer from the certificate child: {exc}") from None


def _main() -> None:
    try:
        request = json.loads(sys.stdin.buffer.read())
        op = request["op"]
        state_dir = Path(request["state_dir"])
        names = [str(n) for n in request["names"]]
    except (ValueError, KeyError, TypeError) as exc:
        sys.exit(f"bad request on stdin: {exc}")
    try:
        if op == "setup":
            EdgePKI.load_or_create(state_dir, names)
        elif op == "issue":
            cert_pem, key_pem = EdgePKI(state_dir=state_dir, names=()).issue_server_cert(names)
            sys.stdout.write(json.dumps({"cert": cert_pem.decode(), "key": key_pem.decode()}))
            sys.stdout.flush()
        else:
            sys.exit(f"unknown operation {op!r}")
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(_CONFIG_ERROR)


if __name__ == "__main__":
    _main()
