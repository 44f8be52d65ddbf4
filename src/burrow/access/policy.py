"""Access policies: pure evaluation of Cloudflare Access semantics (ACCESS.md).

- Policy order: Bypass and Service Auth (`non_identity`) policies first, in order; then Allow
  and Block in order; the first Allow or Block that matches decides. Nothing matched: deny.
- A policy matches when at least one `include` rule matches, every `require` rule matches and
  no `exclude` rule matches.
- IP and service-token selectors are checked on every request; identity selectors (email,
  groups, IdP, claims) use the identity established at login and carried in the session.

Nothing here does I/O; the edge compiles the store's records into these frozen values once per
snapshot and evaluates them per request.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class Action(enum.Enum):
    ALLOW = "allow"
    BLOCK = "block"
    BYPASS = "bypass"
    SERVICE_AUTH = "non_identity"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a session belongs to, as established at login (or a service token)."""

    email: str = ""
    groups: tuple[str, ...] = ()
    idp: str = ""  # id of the identity provider used (login_method)
    amr: tuple[str, ...] = ()
    claims: Mapping[str, object] = field(default_factory=dict)
    service_token_id: str = ""  # set when a service token authenticated the request

    @property
    def is_service(self) -> bool:
        return bool(self.service_token_id)


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What is known about a request regardless of identity."""

    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    service_token_id: str = ""  # a valid service token presented with this request


IDENTITY_SELECTORS = frozenset(
    {"email", "email_domain", "group", "login_method", "auth_method", "oidc_claim"}
)
SELECTORS = IDENTITY_SELECTORS | {"everyone", "ip", "service_token", "any_valid_service_token"}


@dataclass(frozen=True, slots=True)
class Selector:
    """One rule, e.g. `email: alice@example.com` or `ip: 10.0.0.0/8`."""

    kind: str
    value: str = ""
    claim: str = ""  # for oidc_claim: the claim name (value is the expected value)
    _net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    @classmethod
    def parse(cls, kind: str, value: str = "", claim: str = "") -> Selector:
        if kind not in SELECTORS:
            raise ValueError(f"unknown selector {kind!r} (one of {', '.join(sorted(SELECTORS))})")
        net = None
        if kind == "ip":
            try:
                net = ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"invalid IP range {value!r}") from None
        elif kind in ("email", "email_domain"):
            value = value.strip().lower().lstrip("@")
            if not value:
                raise ValueError(f"selector {kind} needs a value")
        elif kind == "oidc_claim" and not claim:
            raise ValueError("selector oidc_claim needs a claim name")
        return cls(kind, value, claim, net)

    @property
    def needs_identity(self) -> bool:
        return self.kind in IDENTITY_SELECTORS

    def matches(self, identity: Identity | None, facts: RequestFacts) -> bool:
        kind = self.kind
        if kind == "everyone":
            return True
        if kind == "ip":
            return self._net is not None and facts.ip in self._net
        if kind == "service_token":
            token = facts.service_token_id or (identity.service_token_id if identity else "")
            return bool(token) and token == self.value
        if kind == "any_valid_service_token":
            return bool(facts.service_token_id or (identity and identity.service_token_id))
        if identity is None or identity.is_service:
            return False
        if kind == "email":
            return identity.email.lower() == self.value
        if kind == "email_domain":
            return identity.email.lower().rpartition("@")[2] == self.value
        if kind == "group":
            return self.value in identity.groups
        if kind == "login_method":
            return identity.idp == self.value
        if kind == "auth_method":
            return self.value in identity.amr
        if kind == "oidc_claim":
            got = identity.claims.get(self.claim)
            if isinstance(got, (list, tuple)):
                return self.value in [str(v) for v in got]
            return got is not None and str(got) == self.value
        return False


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    action: Action
    include: tuple[Selector, ...]
    require: tuple[Selector, ...] = ()
    exclude: tuple[Selector, ...] = ()
    id: str = ""

    def __post_init__(self) -> None:
        if not self.include:
            raise ValueError(f"policy {self.name!r} needs at least one include rule")

    @property
    def needs_identity(self) -> bool:
        return any(s.needs_identity for s in (*self.include, *self.require, *self.exclude))

    @property
    def lets_anyone_in(self) -> bool:
        """Allow + Include Everyone with nothing else: validation warns about it."""
        return (
            self.action in (Action.ALLOW, Action.BYPASS)
            and any(s.kind == "everyone" for s in self.include)
            and not self.require
            and not self.exclude
        )

    def matches(self, identity: Identity | None, facts: RequestFacts) -> bool:
        return (
            any(s.matches(identity, facts) for s in self.include)
            and all(s.matches(identity, facts) for s in self.require)
            and not any(s.matches(identity, facts) for s in self.exclude)
        )


class Outcome(enum.Enum):
    ALLOW = "allow"  # identity (or service token) accepted
    BYPASS = "bypass"  # no authentication needed
    DENY = "deny"  # authenticated but not allowed, or blocked
    LOGIN = "login"  # an identity is needed to decide


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    policy: Policy | None = None

    @property
    def allowed(self) -> bool:
        return self.outcome in (Outcome.ALLOW, Outcome.BYPASS)


def evaluate(
    policies: Sequence[Policy], identity: Identity | None, facts: RequestFacts
) -> Decision:
    """Decide one request. `identity` is None when the request carried no valid session."""
    for policy in policies:
        if policy.action is Action.BYPASS and policy.matches(None, facts):
            return Decision(Outcome.BYPASS, policy)
        if policy.action is Action.SERVICE_AUTH and policy.matches(identity, facts):
            return Decision(Outcome.ALLOW, policy)
    if identity is None or identity.is_service:
        # Allow/Block policies are about people; without a session nothing can match yet.
        # A service token that no Service Auth policy accepted is denied, not sent to login.
        if identity is not None or facts.service_token_id:
            return Decision(Outcome.DENY)
        for policy in policies:
            # A Block ahead of every Allow that needs no identity (an IP range, everyone) is
            # decided now: sending a blocked client through a login first gains nothing.
            if policy.action is Action.ALLOW:
                break
            if policy.action is Action.BLOCK and not policy.needs_identity:
                if policy.matches(None, facts):
                    return Decision(Outcome.DENY, policy)
        if any(p.action is Action.ALLOW for p in policies):
            return Decision(Outcome.LOGIN)
        return Decision(Outcome.DENY)
    for policy in policies:
        if policy.action in (Action.ALLOW, Action.BLOCK) and policy.matches(identity, facts):
            outcome = Outcome.ALLOW if policy.action is Action.ALLOW else Outcome.DENY
            return Decision(outcome, policy)
    return Decision(Outcome.DENY)
