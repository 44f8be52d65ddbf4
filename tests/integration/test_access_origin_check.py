"""The connector's `originRequest.access` check with a real edge, connector and origin: the
connector fetches the edge's keys from burrow's `certsUrl` and refuses (403) requests whose
`Cf-Access-Jwt-Assertion` is missing, of another application, or forged."""

from __future__ import annotations

from pathlib import Path

from access_fixtures import RawOrigin, raw_request

from burrow.access.tokens import KeyRing, SigningKey, issue
from burrow.ingress.rules import Ingress
from burrow.testing.harness import provision, start_connector, start_edge


async def test_connector_verifies_the_assertion_against_the_edge_keys(tmp_path: Path) -> None:
    origin = RawOrigin()
    await origin.start()
    edge = await start_edge(tmp_path, access_team_domain="auth.localhost")
    connector = None
    try:
        port = edge.http_addresses[0][1]
        hosts = ("app.localhost", "open.localhost", "other.localhost")
        made = await provision(edge, hostnames=hosts)
        assert edge.access is not None and edge.access.store is not None
        st = edge.access.store
        app = await st.create_app("app", "app.localhost")
        other = await st.create_app("other", "other.localhost")
        tok, secret = await st.create_service_token("ci")
        for a in (app, other):
            await st.create_policy(a.id, "ci", "non_identity", [("service_token", tok.id, "")])
        await edge.reload()

        def rule(host: str, aud: str) -> dict[str, object]:
            return {
                "hostname": host,
                "service": f"http://127.0.0.1:{origin.port}",
                "originRequest": {
                    "access": {
                        "required": True,
                        "teamName": "auth.localhost",
                        "audTag": [aud],
                        "certsUrl": f"http://auth.localhost:{port}/cdn-cgi/access/certs",
                    }
                },
            }

        ingress = Ingress.parse(
            [
                rule("app.localhost", app.aud),
                rule("open.localhost", app.aud),  # no Access app at the edge for this name
                rule("other.localhost", app.aud),  # the edge's app here has another AUD
                {"service": "http_status:404"},
            ]
        )
        connector = await start_connector(made, ingress)
        svc = {"CF-Access-Client-Id": tok.client_id, "CF-Access-Client-Secret": secret}

        # through the edge's Access: the edge's JWT passes the connector's check
        r = await raw_request(port, "/x", f"app.localhost:{port}", headers=svc)
        assert r.status == 200, r.body
        good = r.json()["headers"]["cf-access-jwt-assertion"]
        assert len(origin.seen) == 1

        # a name the edge does not protect: no assertion, refused by the connector
        r = await raw_request(port, "/x", f"open.localhost:{port}")
        assert r.status == 403 and b"Cf-Access-Jwt-Assertion" in r.body
        # a token for another application (right keys, wrong AUD)
        r = await raw_request(port, "/x", f"other.localhost:{port}", headers=svc)
        assert r.status == 403
        # a token signed with a key the edge never published
        forged = issue(
            KeyRing(SigningKey.generate()),
            issuer="https://auth.localhost",
            audience=[app.aud],
            lifetime=300,
        )
        hdr = {"Cf-Access-Jwt-Assertion": forged}
        assert (await raw_request(port, "/x", f"open.localhost:{port}", headers=hdr)).status == 403
        assert len(origin.seen) == 1  # none of those reached the origin
        # the genuine token presented directly (it is for this AUD) is accepted: the check
        # is about who signed it and for which application
        hdr = {"Cf-Access-Jwt-Assertion": good}
        assert (await raw_request(port, "/x", f"open.localhost:{port}", headers=hdr)).status == 200
        assert connector.dispatcher.access.denied == 3
    finally:
        if connector is not None:
            await connector.stop(grace=1.0)
        await edge.stop(grace=1.0)
        await origin.stop()
