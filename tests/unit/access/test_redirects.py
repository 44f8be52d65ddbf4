"""safe_redirect: every payload of the open-redirect corpus is refused; same-app forms pass."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from burrow.access.redirects import safe_redirect
from burrow.testing.conformance import require_shared_file

HOST = "app.example.com"


def test_corpus_refused_raw_and_encoded() -> None:
    corpus = require_shared_file("corpora", "open-redirects.txt")
    lines = [ln for ln in corpus.read_text().splitlines() if ln]
    assert len(lines) > 500
    for line in lines:
        p = line.replace("www.whitelisteddomain.tld", HOST).replace("whitelisteddomain.tld", HOST)
        assert safe_redirect(p, HOST) is None, p
        assert safe_redirect(quote(p, safe=""), HOST) is None, p


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "/"),
        ("/", "/"),
        ("/a/b?x=1", "/a/b?x=1"),
        (f"https://{HOST}/p?q=1", "/p?q=1"),
        (f"http://{HOST.upper()}:8443/p", "/p"),
        ("/%7Euser", "/%7Euser"),
    ],
)
def test_same_app_forms_accepted(value: str, expected: str) -> None:
    assert safe_redirect(value, HOST) == expected


@pytest.mark.parametrize(
    "value",
    [
        "//evil.com",
        "/\\evil.com",
        "/\t/evil.com",
        "/%2f%2fevil.com",
        "/%5cevil.com",
        "https://evil.com/",
        f"https://{HOST}@evil.com/",
        f"https://evil.com#{HOST}",
        "javascript:alert(1)",
        f"https://{HOST}.evil.com/",
        "/x\r\nSet-Cookie: a=b",
    ],
)
def test_leaving_the_app_refused(value: str) -> None:
    assert safe_redirect(value, HOST) is None
