"""WAF custom rules: a rule set loaded from YAML, compiled once, evaluated in memory.

    rules:
      - id: block-admin                       # optional; default rule-<n>
        description: no admin from outside    # optional
        expression: http.request.uri.path contains "/admin" and not ip.src in {10.0.0.0/8}
        action: block                         # block | log | skip
        hostnames: [app.example.com]          # optional; absent = every hostname
        enabled: true                         # optional

Rules run in file order; per-hostname rules only for their hostnames. `block` answers 403 and
stops; `log` records the match and goes on; `skip` stops evaluating the remaining rules (the
request proceeds). The `WafEngine` holds the current immutable `RuleSet` and swaps it when the
file changes, keeping the old set if the new file does not compile.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from burrow.errors import ConfigError
from burrow.waf.compile import Predicate, WafRequest, compile_node
from burrow.waf.parse import RuleSyntaxError, parse

log = logging.getLogger("burrow.waf")

ACTIONS = ("block", "log", "skip")


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    expression: str
    action: str
    predicate: Predicate
    hostnames: frozenset[str] = frozenset()
    description: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of a rule set: the blocking rule (if any) and the rules that logged."""

    blocked_by: Rule | None
    logged: tuple[Rule, ...] = ()


ALLOW = Verdict(None)


class RuleSet:
    """Rules precomputed per hostname, so a request looks up its list once."""

    __slots__ = ("_by_host", "_global", "rules")

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = tuple(rules)
        self._global = tuple(r for r in rules if not r.hostnames)
        hosts = {h for r in rules for h in r.hostnames}
        self._by_host = {
            h: tuple(r for r in rules if not r.hostnames or h in r.hostnames) for h in hosts
        }

    def for_host(self, host: str) -> tuple[Rule, ...]:
        return self._by_host.get(host, self._global)

    def evaluate(self, rules: tuple[Rule, ...], request: WafRequest) -> Verdict:
        logged: list[Rule] = []
        for rule in rules:
            if not rule.predicate(request):
                continue
            if rule.action == "block":
                return Verdict(rule, tuple(logged))
            if rule.action == "skip":
                break
            logged.append(rule)
        return Verdict(None, tuple(logged)) if logged else ALLOW


def compile_rule(expression: str, action: str, **kw: Any) -> Rule:
    if action not in ACTIONS:
        raise ConfigError(f"unknown action {action!r} (use one of {', '.join(ACTIONS)})")
    return Rule(
        expression=expression, action=action, predicate=compile_node(parse(expression)), **kw
    )


def normalise_hostnames(hostnames: Iterable[str]) -> tuple[str, ...]:
    """Hostnames as the edge normalises the request host: lower case, no trailing dot."""
    out = (h.strip().lower().rstrip(".") for h in hostnames)
    return tuple(dict.fromkeys(h for h in out if h))


def parse_rules(data: Any, source: str = "rules") -> RuleSet:
    """Build a RuleSet from decoded YAML: a mapping with `rules:` or a bare list."""
    if data is None:
        return RuleSet([])
    if isinstance(data, dict):
        unknown = set(data) - {"rules"}
        if unknown:
            raise ConfigError(f"{source}: unknown keys {', '.join(sorted(map(str, unknown)))}")
        data = data.get("rules") or []
    if not isinstance(data, list):
        raise ConfigError(f"{source}: expected a list of rules")
    rules: list[Rule] = []
    seen: set[str] = set()
    for n, item in enumerate(data, 1):
        where = f"{source}: rule {n}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping")
        unknown = set(item) - {"id", "description", "expression", "action", "hostnames", "enabled"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))}")
        rule_id = str(item.get("id") or f"rule-{n}")
        if rule_id in seen:
            raise ConfigError(f"{where}: duplicate id {rule_id!r}")
        seen.add(rule_id)
        expression = item.get("expression")
        if not isinstance(expression, str):
            raise ConfigError(f"{where} ({rule_id}): 'expression' must be a string")
        hostnames = item.get("hostnames") or []
        if isinstance(hostnames, str):
            hostnames = [hostnames]
        if not isinstance(hostnames, list) or not all(isinstance(h, str) for h in hostnames):
            raise ConfigError(f"{where} ({rule_id}): 'hostnames' must be a list of names")
        try:
            rule = compile_rule(
                expression,
                str(item.get("action", "")),
                id=rule_id,
                hostnames=frozenset(normalise_hostnames(hostnames)),
                description=str(item.get("description") or ""),
            )
        except RuleSyntaxError as exc:
            raise ConfigError(f"{where} ({rule_id}): {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{where} ({rule_id}): {exc}") from None
        if item.get("enabled", True):
            rules.append(rule)
    return RuleSet(rules)


def load_rules_file(path: Path) -> RuleSet:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read WAF rules file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}: {exc}") from None
    return parse_rules(data, str(path))


class WafEngine:
    """The current rule set, optionally backed by a file that is re-read when it changes, plus
    the rules managed through the API (`set_managed`, from the state store).

    The evaluated set is the file's rules first, then the managed ones: the file is this
    node's local policy (typically `skip` for trusted ranges, or emergency blocks) and keeps
    precedence over rules anyone with an operator token can add to every node."""

    def __init__(self, ruleset: RuleSet | None = None, path: Path | None = None) -> None:
        self.ruleset = ruleset or RuleSet([])
        self._file_rules: tuple[Rule, ...] = self.ruleset.rules
        self._managed: tuple[Rule, ...] = ()
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self.blocked = 0
        self.logged = 0

    @classmethod
    def from_file(cls, path: Path) -> WafEngine:
        engine = cls(load_rules_file(path), path=path)
        engine._stamp = engine._file_stamp()
        return engine

    def set_managed(self, rules: list[Rule]) -> None:
        """Replace the API-managed rules (compiled by the caller once per store change)."""
        self._managed = tuple(rules)
        self.ruleset = RuleSet([*self._file_rules, *self._managed])

    def _file_stamp(self) -> tuple[int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def maybe_reload(self) -> bool:
        """Re-read the file if it changed; a broken file keeps the old rules (and is logged)."""
        if self.path is None:
            return False
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            ruleset = load_rules_file(self.path)
        except ConfigError as exc:
            log.error("WAF rules not reloaded, keeping the previous set: %s", exc)
            return False
        self._file_rules = ruleset.rules
        self.ruleset = RuleSet([*self._file_rules, *self._managed])
        log.info("WAF rules reloaded from %s: %d rules", self.path, len(ruleset.rules))
        return True

    def check(
        self,
        *,
        host: str,
        target: bytes,
        method: bytes,
        ip: str,
        headers: list[tuple[bytes, bytes]],
        ssl: bool,
        ray: str,
    ) -> Rule | None:
        """The blocking rule for this request, or None; `log` matches are logged here."""
        ruleset = self.ruleset
        rules = ruleset.for_host(host)
        if not rules:
            return None
        request = WafRequest.build(
            host=host, target=target, method=method, ip=ip, headers=headers, ssl=ssl
        )
        verdict = ruleset.evaluate(rules, request)
        for rule in verdict.logged:
            self.logged += 1
            log.warning(
                "waf rule %s matched (log): %s %s host=%s ip=%s ray=%s",
                rule.id,
                request.method,
                request.path,
                host,
                ip,
                ray,
            )
        if verdict.blocked_by is not None:
            self.blocked += 1
            log.info(
                "waf rule %s blocked %s %s host=%s ip=%s ray=%s",
                verdict.blocked_by.id,
                request.method,
                request.path,
                host,
                ip,
                ray,
            )
        return verdict.blocked_by
