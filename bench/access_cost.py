"""What Access costs per request (issue 7), measured two ways. Not a test; pytest does not
collect it.

1. In process: `AccessService.check()` (the whole per-request decision the edge's listeners
   call) timed over many calls for each kind of request: a host without an application (the
   gate's early exit), an app cookie (verified token from the cache, policy evaluation), a
   service token (secret hash + cached service JWT), a fresh token (RSA verification, cache
   miss), and an unauthenticated request (login redirect).
2. End to end: `burrow edge serve` + `burrow tunnel run` as processes (bench/procs.py), wrk
   `-c64` GET /small on the same hostname without an Access application, then with one that
   a service token passes (the token's headers on every request). Reports req/s, p50/p99 and
   CPU µs per request of edge + connector + origin, and the difference.

    python bench/access_cost.py [--duration 5] [--calls 200000] [--skip-e2e]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loads
import procs

from burrow.access.policy import Identity
from burrow.access.service import AccessRequest, AccessService
from burrow.access.snapshot import identity_claims
from burrow.access.tokens import issue
from burrow.store.access_store import AccessStore
from burrow.store.sealing import SecretBox
from burrow.store.sqlalchemy_store import SQLStore


def _req(
    host: str, target: str = "/small", headers: list[tuple[bytes, bytes]] | None = None
) -> AccessRequest:
    return AccessRequest(
        method="GET",
        host=host,
        authority=host,
        scheme="http",
        target=target,
        headers=[(b"host", host.encode()), (b"user-agent", b"wrk"), *(headers or [])],
        ip="127.0.0.1",
    )


async def in_process(calls: int, tmp: Path) -> dict[str, float]:
    store = await SQLStore.open(f"sqlite+aiosqlite:///{tmp / 'bench.db'}")
    st = AccessStore(store, SecretBox.load_or_create(tmp))
    app = await st.create_app("bench", "app.localhost")
    await st.create_policy(app.id, "team", "allow", [("email_domain", "example.com", "")])
    tok, secret = await st.create_service_token("ci")
    await st.create_policy(app.id, "ci", "non_identity", [("service_token", tok.id, "")])
    svc = AccessService(st, team_domain="auth.localhost")
    await svc.refresh()
    ring = svc.snapshot.ring
    assert ring is not None
    ident = Identity(email="alice@example.com", idp="x", amr=("email",))

    def token() -> str:
        return issue(
            ring,
            issuer=svc.issuer,
            audience=[app.aud],
            email=ident.email,
            subject="alice",
            lifetime=3600,
            extra=identity_claims(ident),
        )

    cookie = token()
    cases = {
        "no_app_on_host": _req("open.localhost"),
        "app_cookie_allow": _req(
            "app.localhost", headers=[(b"cookie", f"CF_Authorization={cookie}".encode())]
        ),
        "service_token_allow": _req(
            "app.localhost",
            headers=[
                (b"cf-access-client-id", tok.client_id.encode()),
                (b"cf-access-client-secret", secret.encode()),
            ],
        ),
        "no_session_redirect": _req("app.localhost"),
    }
    import logging

    logging.getLogger("burrow.access.audit").setLevel(logging.WARNING)
    out: dict[str, float] = {}
    for name, req in cases.items():
        svc.check(req)  # warm the caches
        t0 = time.perf_counter()
        for _ in range(calls):
            svc.check(req)
        out[name + "_us"] = round((time.perf_counter() - t0) / calls * 1e6, 3)
    fresh = [token() for _ in range(200)]
    t0 = time.perf_counter()
    for t in fresh:
        svc.check(_req("app.localhost", headers=[(b"cookie", f"CF_Authorization={t}".encode())]))
    out["fresh_token_rsa_verify_us"] = round((time.perf_counter() - t0) / len(fresh) * 1e6, 1)
    await store.close()
    return out


def _wrk(ep: loads.Endpoint, duration: float, headers: list[str]) -> dict[str, float]:
    lua = loads._lua_file()
    try:
        args = ["wrk", "-t2", "-c64", f"-d{max(1, round(duration))}s", "--timeout", "5s", "-s", lua]
        args += ["-H", f"Host: {ep.host}"]
        for h in headers:
            args += ["-H", h]
        res = subprocess.run(
            [*args, ep.url("/small")],
            capture_output=True,
            text=True,
            timeout=duration + 30,
            check=False,
        )
    finally:
        Path(lua).unlink(missing_ok=True)
    m = re.search(r"WRKJSON (\{.*\})", res.stdout)
    if not m:
        raise RuntimeError(f"wrk failed: {res.stdout}\n{res.stderr}")
    r = json.loads(m.group(1))
    secs = r["duration_us"] / 1e6
    return {
        "requests": r["requests"],
        "rps": round(r["requests"] / secs, 1),
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "errors": r["err_connect"]
        + r["err_read"]
        + r["err_write"]
        + r["err_status"]
        + r["err_timeout"],
    }


def _status(port: int, headers: list[str]) -> int | None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(
            "GET",
            "/small",
            headers={"Host": "bench.localhost", **dict(h.split(": ", 1) for h in headers)},
        )
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def end_to_end(duration: float, tmp: Path) -> dict[str, Any]:
    started: list[procs.Proc] = []
    try:
        origin, origin_port, _kind = procs.start_origin(tmp)
        started.append(origin)
        b = procs.start_burrow(tmp, origin_port, "bench.localhost", started)
        pids = [b.edge.pid, b.connector.pid, origin.pid]
        ep = loads.Endpoint(b.http_port, "bench.localhost")

        def run(headers: list[str]) -> dict[str, Any]:
            cpu0 = sum(procs.cpu_seconds(p) for p in pids)
            r = _wrk(ep, duration, headers)
            cpu = sum(procs.cpu_seconds(p) for p in pids) - cpu0
            r["cpu_us_per_req"] = round(cpu / max(1, r["requests"]) * 1e6, 1)
            return r

        _wrk(ep, 1, [])  # warm-up
        base = run([])
        exe = procs.burrow_bin()
        state = tmp / "edge-state"

        def cli(*args: str) -> dict[str, Any]:
            done = subprocess.run(
                [exe, "edge", "access", *args, "--state-dir", str(state), "--json"],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            return json.loads(done.stdout)

        cli("app", "create", "bench", "--domain", "bench.localhost")
        tok = cli("service-token", "create", "bench")
        cli(
            "policy",
            "create",
            "bench",
            "ci",
            "--action",
            "non_identity",
            "--include",
            "service_token=bench",
        )
        headers = [
            f"CF-Access-Client-Id: {tok['client_id']}",
            f"CF-Access-Client-Secret: {tok['client_secret']}",
        ]
        procs.wait_until(
            lambda: _status(b.http_port, headers) == 200 and _status(b.http_port, []) == 403,
            30, b.edge, "the edge to enforce the new application and policy",
        )  # fmt: skip
        _wrk(ep, 1, headers)  # warm-up
        with_access = run(headers)
        if with_access["errors"]:
            raise RuntimeError(f"{with_access['errors']} requests failed with Access on")
        return {
            "no_access": base,
            "service_token": with_access,
            "rps_ratio": round(with_access["rps"] / base["rps"], 3) if base["rps"] else None,
            "cpu_us_per_req_added": round(
                with_access["cpu_us_per_req"] - base["cpu_us_per_req"], 1
            ),
        }
    finally:
        for p in reversed(started):
            p.stop()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--skip-e2e", action="store_true")
    a = ap.parse_args()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="burrow-access-bench-") as d:
        tmp = Path(d)
        (tmp / "inproc").mkdir()
        result["check_per_call"] = asyncio.run(in_process(a.calls, tmp / "inproc"))
        if not a.skip_e2e:
            (tmp / "e2e").mkdir()
            result["end_to_end_c64"] = end_to_end(a.duration, tmp / "e2e")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
