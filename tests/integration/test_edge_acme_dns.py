"""ACME dns-01 through `--acme-dns-hook` against pebble (its DNS server, challtestsrv, takes
the TXT records from the hook): a wildcard route gets a certificate that curl verifies. And two
edge nodes on one store: a lease makes only one of them order, the other installs the
certificate from the store."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from pathlib import Path

import pytest

from burrow.edge.acme_manager import AcmeManager
from burrow.edge.server import EdgeServer
from burrow.store.acme_leases import lease_holder
from burrow.testing.frontdoor import curl, edge_stack
from burrow.testing.harness import provision, start_edge
from burrow.testing.pebble import free_port, pebble_missing, run_pebble

pytestmark = pytest.mark.skipif(pebble_missing() is not None, reason=str(pebble_missing()))


async def _until_installed(manager: AcmeManager, name: str) -> None:
    async with asyncio.timeout(60):
        while name not in manager.installed:
            manager.cycle_done.clear()
            await manager.cycle_done.wait()


def _calls(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


async def test_wildcard_route_gets_a_certificate_over_dns01(tmp_path: Path) -> None:
    async with run_pebble(tmp_path / "pebble", free_port()) as pebble:
        calls = tmp_path / "hook-calls.txt"
        hook = pebble.dns_hook(tmp_path / "dns-hook", calls)
        async with edge_stack(
            tmp_path / "edge",
            hostnames=("*.wild.localhost",),
            https_listen=["127.0.0.1:0"],
            acme_directory=pebble.directory,
            acme_ca_bundle=pebble.ca_bundle,
            acme_dns_hook=str(hook),
            acme_interval=3600.0,
        ) as (edge, seen):
            manager = edge.acme
            assert manager is not None
            await _until_installed(manager, "*.wild.localhost")
            root = tmp_path / "pebble-root.pem"
            root.write_bytes(pebble.root_pem())
            for host in ("a.wild.localhost", "b.wild.localhost"):
                version, status, _body = await curl(edge, host, "/echo", "--http2", cacert=root)
                assert (version, status) == ("2", 200)
            assert seen.count("/echo") == 2
            # The hook published the TXT record for the base name and removed it afterwards.
            (present, cleanup) = _calls(calls)
            assert present[:2] == ["present", "wild.localhost"] and len(present[2]) == 43
            assert cleanup == ["cleanup", *present[1:]]


async def test_two_edges_on_one_store_order_once(tmp_path: Path) -> None:
    async with run_pebble(tmp_path / "pebble", free_port()) as pebble:
        calls = tmp_path / "hook-calls.txt"
        inner = pebble.dns_hook(tmp_path / "dns-hook-inner", calls)
        # A slow hook keeps the first order open while the other node looks at the name.
        hook = tmp_path / "dns-hook"
        hook.write_text(f'#!/bin/sh\n[ "$1" = present ] && sleep 1.5\nexec {inner} "$@"\n')
        hook.chmod(0o755)
        common = {
            "store_url": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
            "https_listen": ["127.0.0.1:0"],
            "acme_directory": pebble.directory,
            "acme_ca_bundle": pebble.ca_bundle,
            "acme_dns_hook": str(hook),
            "acme_challenges": ("dns-01",),
            "acme_interval": 3600.0,
        }
        edges: list[EdgeServer] = []
        try:
            edges.append(await start_edge(tmp_path / "a", **common))
            # Nodes of one cluster share the sealing key (certificate keys are sealed with it).
            (tmp_path / "b").mkdir(mode=0o700)
            shutil.copy2(tmp_path / "a" / "seal.key", tmp_path / "b" / "seal.key")
            edges.append(await start_edge(tmp_path / "b", **common))
            managers = [e.acme for e in edges]
            assert managers[0] is not None and managers[1] is not None
            await provision(edges[0], hostnames=["shared.localhost"])
            await asyncio.gather(*(_until_installed(m, "shared.localhost") for m in managers))

            assert sum(m.issued for m in managers) == 1
            assert [c[0] for c in _calls(calls)] == ["present", "cleanup"]
            waiter = managers[0] if managers[1].issued else managers[1]
            assert waiter.lease_waits >= 1  # it saw the other node's lease and waited
            a, b = (m.installed["shared.localhost"] for m in managers)
            assert a.cert_pem == b.cert_pem
            assert a.not_after - dt.datetime.now(dt.UTC) > dt.timedelta(days=2)
            assert edges[0].store is not None
            assert await lease_holder(edges[0].store, "shared.localhost") is None  # released
            root = tmp_path / "pebble-root.pem"
            root.write_bytes(pebble.root_pem())
            for edge in edges:  # both serve it (no connector yet: 530 after a verified TLS)
                assert (await curl(edge, "shared.localhost", "/", cacert=root))[1] == 530
        finally:
            for edge in edges:
                await edge.stop(grace=0.5)
