"""config.yml -> cloudflared's remote JSON form (durations as whole seconds) and back."""

from __future__ import annotations

import json

from burrow.ingress.config import parse_config_text
from burrow.ingress.remote import encode_config_file, parse_remote_config

YAML = """
originRequest:
  connectTimeout: 1m30s
  caPool: /etc/ca.pem
ingress:
  - hostname: a.example.com
    path: ^/api
    service: http://localhost:8000
    originRequest:
      keepAliveTimeout: 2m
      noHappyEyeballs: true
      keepAliveConnections: 7
      ipRules:
        - prefix: 10.0.0.0/8
          ports: [80, 443]
          allow: true
      access:
        required: true
        teamName: team
        audTag: [aud1]
  - service: http_status:404
"""


def test_round_trip_keeps_meaning() -> None:
    cfg = parse_config_text(YAML, "config.yml")
    doc = encode_config_file(cfg)
    assert doc["originRequest"] == {"connectTimeout": 90, "caPool": "/etc/ca.pem"}
    first = doc["ingress"][0]
    assert first["path"] == "^/api" and first["originRequest"]["keepAliveTimeout"] == 120
    ingress = parse_remote_config(json.loads(json.dumps(doc)))
    rule = ingress.rules[0]
    opts = rule.origin_request
    assert (opts.connect_timeout, opts.keep_alive_timeout, opts.ca_pool) == (
        90.0,
        120.0,
        "/etc/ca.pem",
    )
    assert (opts.no_happy_eyeballs, opts.keep_alive_connections) == (True, 7)
    assert str(opts.ip_rules[0].prefix) == "10.0.0.0/8" and opts.ip_rules[0].ports == (80, 443)
    assert opts.access.required and opts.access.team_name == "team"
    assert rule.path.pattern == "^/api"
    assert ingress.match("a.example.com", "/api/x")[0] == 0
    assert ingress.match("a.example.com", "/web")[0] == 1
