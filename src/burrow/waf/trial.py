"""Try WAF rules against a sample request without sending one (`burrow edge waf rule test`,
`POST /api/v1/waf/rules/test`): what an operator checks before creating a rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from burrow.waf.compile import WafRequest, compile_node
from burrow.waf.parse import parse
from burrow.waf.rules import Rule, RuleSet


@dataclass(frozen=True, slots=True)
class SampleRequest:
    host: str = "example.com"
    path: str = "/"  # path and optional ?query, as sent
    method: str = "GET"
    ip: str = "192.0.2.1"
    headers: tuple[tuple[str, str], ...] = ()
    ssl: bool = True

    def build(self) -> WafRequest:
        host = self.host.strip().lower().rstrip(".")
        return WafRequest.build(
            host=host,
            target=self.path.encode("utf-8", "surrogateescape"),
            method=self.method.upper().encode(),
            ip=self.ip,
            headers=[(n.strip().lower().encode(), v.strip().encode()) for n, v in self.headers],
            ssl=self.ssl,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SampleRequest:
        headers = data.get("headers") or {}
        pairs = headers.items() if isinstance(headers, dict) else headers
        d = _DEFAULT
        return cls(
            host=str(data.get("host", d.host)),
            path=str(data.get("path", d.path)),
            method=str(data.get("method", d.method)),
            ip=str(data.get("ip", d.ip)),
            headers=tuple((str(n), str(v)) for n, v in pairs),
            ssl=bool(data.get("ssl", d.ssl)),
        )


_DEFAULT = SampleRequest()


def expression_matches(expression: str, sample: SampleRequest) -> bool:
    """Parse (RuleSyntaxError with the position) and evaluate one expression."""
    return compile_node(parse(expression))(sample.build())


def evaluate_rules(rules: list[Rule], sample: SampleRequest) -> dict[str, Any]:
    """What the edge would do with `sample`: the blocking rule, and the rules that log."""
    ruleset = RuleSet(rules)
    request = sample.build()
    verdict = ruleset.evaluate(ruleset.for_host(request.host), request)
    blocked = verdict.blocked_by
    return {
        "action": "block" if blocked is not None else "allow",
        "blocked_by": blocked.id if blocked is not None else None,
        "logged_by": [r.id for r in verdict.logged],
    }
