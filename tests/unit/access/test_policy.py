"""Access policy evaluation order and selectors (ACCESS.md)."""

from __future__ import annotations

import ipaddress

import pytest

from burrow.access.policy import (
    Action,
    Identity,
    Outcome,
    Policy,
    RequestFacts,
    Selector,
    evaluate,
)

S = Selector.parse
HOME = RequestFacts(ip=ipaddress.ip_address("192.0.2.10"))
OFFICE = RequestFacts(ip=ipaddress.ip_address("10.1.2.3"))
ALICE = Identity(email="alice@example.com", groups=("admins",), idp="oidc-1")
BOB = Identity(email="bob@other.org", idp="otp")


def test_allow_by_email_domain_and_login_needed_without_session() -> None:
    policies = [Policy("staff", Action.ALLOW, (S("email_domain", "example.com"),))]
    assert evaluate(policies, None, HOME).outcome is Outcome.LOGIN
    assert evaluate(policies, ALICE, HOME).outcome is Outcome.ALLOW
    assert evaluate(policies, BOB, HOME).outcome is Outcome.DENY


def test_first_matching_allow_or_block_decides() -> None:
    policies = [
        Policy("block bob", Action.BLOCK, (S("email", "bob@other.org"),)),
        Policy("everyone", Action.ALLOW, (S("everyone"),)),
    ]
    assert evaluate(policies, BOB, HOME).outcome is Outcome.DENY
    assert evaluate(policies, ALICE, HOME).outcome is Outcome.ALLOW
    assert policies[1].lets_anyone_in


def test_bypass_first_whatever_its_position() -> None:
    policies = [
        Policy("people", Action.ALLOW, (S("email", "alice@example.com"),)),
        Policy("office", Action.BYPASS, (S("ip", "10.0.0.0/8"),)),
    ]
    assert evaluate(policies, None, OFFICE).outcome is Outcome.BYPASS
    assert evaluate(policies, None, HOME).outcome is Outcome.LOGIN


def test_require_and_exclude() -> None:
    policies = [
        Policy(
            "admins from the office",
            Action.ALLOW,
            (S("email_domain", "example.com"),),
            require=(S("group", "admins"), S("ip", "10.0.0.0/8")),
            exclude=(S("email", "eve@example.com"),),
        )
    ]
    assert evaluate(policies, ALICE, OFFICE).outcome is Outcome.ALLOW
    assert evaluate(policies, ALICE, HOME).outcome is Outcome.DENY  # require ip fails
    eve = Identity(email="eve@example.com", groups=("admins",))
    assert evaluate(policies, eve, OFFICE).outcome is Outcome.DENY


def test_service_tokens() -> None:
    policies = [
        Policy("ci", Action.SERVICE_AUTH, (S("service_token", "tok-1"),)),
        Policy("people", Action.ALLOW, (S("everyone"),)),
    ]
    with_token = RequestFacts(ip=HOME.ip, service_token_id="tok-1")
    other_token = RequestFacts(ip=HOME.ip, service_token_id="tok-2")
    assert evaluate(policies, None, with_token).outcome is Outcome.ALLOW
    # a valid token no Service Auth policy names is denied, not sent to a login page
    assert evaluate(policies, None, other_token).outcome is Outcome.DENY
    any_token = [Policy("any", Action.SERVICE_AUTH, (S("any_valid_service_token"),))]
    assert evaluate(any_token, None, other_token).outcome is Outcome.ALLOW
    assert evaluate(any_token, None, HOME).outcome is Outcome.DENY


def test_ip_block_before_allow_needs_no_login() -> None:
    policies = [
        Policy("bad net", Action.BLOCK, (S("ip", "192.0.2.0/24"),)),
        Policy("people", Action.ALLOW, (S("everyone"),)),
    ]
    assert evaluate(policies, None, HOME).outcome is Outcome.DENY
    assert evaluate(policies, None, OFFICE).outcome is Outcome.LOGIN


def test_nothing_matches_is_deny_and_empty_is_deny() -> None:
    assert evaluate([], ALICE, HOME).outcome is Outcome.DENY
    assert evaluate([], None, HOME).outcome is Outcome.DENY


def test_identity_selectors() -> None:
    claims = Identity(email="c@x.io", idp="oidc-1", amr=("mfa",), claims={"dept": ["eng", "ops"]})
    assert S("login_method", "oidc-1").matches(claims, HOME)
    assert S("auth_method", "mfa").matches(claims, HOME)
    assert S("oidc_claim", "ops", claim="dept").matches(claims, HOME)
    assert not S("oidc_claim", "hr", claim="dept").matches(claims, HOME)
    assert S("ip", "2001:db8::/32").matches(
        None, RequestFacts(ip=ipaddress.ip_address("2001:db8::1"))
    )


@pytest.mark.parametrize(
    ("kind", "value"), [("nope", "x"), ("ip", "10.0.0.0/33"), ("email", ""), ("oidc_claim", "v")]
)
def test_bad_selectors_refused(kind: str, value: str) -> None:
    with pytest.raises(ValueError):
        S(kind, value)


def test_policy_needs_include() -> None:
    with pytest.raises(ValueError):
        Policy("empty", Action.ALLOW, ())
