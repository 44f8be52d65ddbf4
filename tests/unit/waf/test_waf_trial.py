"""Trying rules against a sample request (`burrow edge waf rule test`, the API's /test)."""

from __future__ import annotations

import pytest

from burrow.waf.parse import RuleSyntaxError
from burrow.waf.rules import compile_rule
from burrow.waf.trial import SampleRequest, evaluate_rules, expression_matches


def test_sample_from_json_defaults_and_headers() -> None:
    sample = SampleRequest.from_json({"path": "/x?a=1", "headers": {"X-Debug": "1"}})
    assert (sample.host, sample.method, sample.ip, sample.ssl) == (
        "example.com",
        "GET",
        "192.0.2.1",
        True,
    )
    assert expression_matches('http.request.headers["x-debug"] eq "1"', sample)
    assert expression_matches(
        'http.request.uri.query eq "a=1" and ip.src in {192.0.2.0/24}', sample
    )
    assert not expression_matches("not ssl", sample)
    with pytest.raises(RuleSyntaxError) as err:
        expression_matches("ssl or", sample)
    assert err.value.column == 7


def test_evaluate_rules_scope_skip_and_log() -> None:
    rules = [
        compile_rule("ip.src eq 10.0.0.1", "skip", id="office"),
        compile_rule('http.user_agent contains "bot"', "log", id="bots"),
        compile_rule('http.request.uri.path eq "/admin"', "block", id="adm",
                     hostnames=frozenset({"app.example"})),
    ]  # fmt: skip
    bot = (("User-Agent", "some bot"),)
    hit = SampleRequest(host="APP.example.", path="/admin", headers=bot)
    assert evaluate_rules(rules, hit) == {
        "action": "block",
        "blocked_by": "adm",
        "logged_by": ["bots"],
    }
    other = SampleRequest(host="other.example", path="/admin")
    assert evaluate_rules(rules, other)["action"] == "allow"
    office = SampleRequest(host="app.example", path="/admin", ip="10.0.0.1")
    assert evaluate_rules(rules, office) == {"action": "allow", "blocked_by": None, "logged_by": []}
