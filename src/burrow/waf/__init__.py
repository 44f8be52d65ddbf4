"""WAF custom rules (a subset of Cloudflare's rules language), evaluated at the edge."""

from burrow.waf.compile import WafRequest
from burrow.waf.parse import RuleSyntaxError, parse
from burrow.waf.rules import Rule, RuleSet, Verdict, WafEngine, load_rules_file, parse_rules

__all__ = [
    "Rule",
    "RuleSet",
    "RuleSyntaxError",
    "Verdict",
    "WafEngine",
    "WafRequest",
    "load_rules_file",
    "parse",
    "parse_rules",
]
