"""Which application protects a request, and path normalisation (ACCESS.md "Paths")."""

from __future__ import annotations

import pytest

from burrow.access.apps import AppIndex, Application, normalize_path
from burrow.access.policy import Action, Policy, Selector
from burrow.errors import HTTPRequestError

P = (Policy("all", Action.ALLOW, (Selector.parse("everyone"),)),)


def app(domain: str) -> Application:
    return Application(id=domain, name=domain, domain=domain, aud="x" * 64, policies=P)


INDEX = AppIndex(
    [
        app("example.com"),
        app("example.com/admin/*"),
        app("*.example.com"),
        app("api.example.com/v2"),
    ]
)


@pytest.mark.parametrize(
    ("host", "path", "domain"),
    [
        ("example.com", "/", "example.com"),
        ("example.com", "/admin", "example.com/admin/*"),
        ("example.com", "/admin/users", "example.com/admin/*"),
        ("example.com", "/administrator", "example.com"),
        ("a.example.com", "/", "*.example.com"),
        ("a.b.example.com", "/x", "*.example.com"),
        ("api.example.com", "/v2/x", "api.example.com/v2"),
        ("api.example.com", "/v1", "*.example.com"),
        ("other.org", "/", None),
        ("notexample.com", "/", None),
    ],
)
def test_most_specific_app_wins(host: str, path: str, domain: str | None) -> None:
    found = INDEX.find(host, normalize_path(path))
    assert (found.domain if found else None) == domain


@pytest.mark.parametrize(
    "raw", ["/admin", "/Admin", "//admin", "/%61dmin", "/x/../admin", "/%2e%2e/admin", "/./admin"]
)
def test_tricky_paths_still_reach_the_admin_app(raw: str) -> None:
    found = INDEX.find("example.com", normalize_path(raw))
    assert found is not None and found.domain == "example.com/admin/*"


@pytest.mark.parametrize("raw", ["/admin%2fx", "/admin%2Fx", "/a%5cb", "/a\\b", "/a%zz", "admin"])
def test_ambiguous_paths_refused(raw: str) -> None:
    with pytest.raises(HTTPRequestError):
        normalize_path(raw)


def test_normalize_keeps_reserved_encodings_and_trailing_slash() -> None:
    assert normalize_path("/a%20b/") == "/a%20b/"
    assert normalize_path("/a/b/..") == "/a/"
    assert normalize_path("/../../etc") == "/etc"
