"""Access applications and which one protects a request.

An application is a hostname (exact or `*.example.com`) plus an optional path (`/admin`,
`/admin/*`). The most specific match wins and nothing is inherited from a less specific app.

Paths are compared after `normalize_path`, and the edge forwards that same normalised path to
the origin, so the path the policy checks is the path the origin sees. Decisions recorded in
docs/access.md:
- app paths match case-insensitively (`/Admin` is covered by an app on `/admin`): origins that
  fold case (many do) must not open a way around a policy;
- percent-encoded unreserved characters are decoded (`/%61dmin` is `/admin`), dot segments are
  resolved (`/x/../admin`, `/%2e%2e/admin`) and repeated slashes collapse (`//admin`);
- an encoded slash or backslash (`%2f`, `%5c`) is refused outright: origins disagree on whether
  it separates segments, so no single normalised form is safe.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from burrow.access.policy import Policy
from burrow.errors import HTTPRequestError

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")


def normalize_path(path: str) -> str:
    """The canonical form of a request path (no query). Raises HTTPRequestError(400)."""
    if not path.startswith("/"):
        raise HTTPRequestError("request path must start with /", status=400)
    if "\\" in path:
        raise HTTPRequestError("backslash in request path", status=400)

    def decode(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        if ch in "/\\":
            raise HTTPRequestError("encoded slash in request path", status=400)
        if ch in _UNRESERVED:
            return ch
        return "%" + m.group(1).upper()

    decoded = _PCT.sub(decode, path)
    if "%" in _PCT.sub("", decoded):
        raise HTTPRequestError("malformed percent-encoding in request path", status=400)
    out: list[str] = []
    for segment in decoded.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    trailing = decoded.endswith("/") or decoded.endswith("/.") or decoded.endswith("/..")
    result = "/" + "/".join(out)
    if trailing and out:
        result += "/"
    return result


@dataclass(frozen=True)
class Application:
    id: str
    name: str
    domain: str  # "app.example.com", "*.example.com", optionally with a path: "x.com/admin/*"
    aud: str
    policies: tuple[Policy, ...]
    session_duration: float = 24 * 3600.0
    allowed_idps: tuple[str, ...] = ()
    cors: dict[str, object] = field(default_factory=dict)
    host: str = field(init=False)
    path: str = field(init=False)  # lower-cased prefix without a trailing "*", "" for all

    def __post_init__(self) -> None:
        host, sep, path = self.domain.partition("/")
        object.__setattr__(self, "host", host.lower().rstrip("."))
        path = ("/" + path) if sep else ""
        if path.endswith("*"):
            path = path[:-1]
        object.__setattr__(self, "path", path.lower())

    def covers_path(self, normalized_path: str) -> bool:
        if not self.path:
            return True
        p = normalized_path.lower()
        prefix = self.path.rstrip("/")
        return p == prefix or p.startswith(prefix + "/")

    @property
    def specificity(self) -> tuple[int, int]:
        """Exact hosts beat wildcards; longer paths beat shorter ones."""
        return (0 if self.host.startswith("*.") else 1, len(self.path.rstrip("/")))


class AppIndex:
    """Finds the most specific application for (host, normalised path)."""

    def __init__(self, apps: Iterable[Application]) -> None:
        self._exact: dict[str, list[Application]] = {}
        self._wild: dict[str, list[Application]] = {}
        for app in apps:
            table = self._wild if app.host.startswith("*.") else self._exact
            key = app.host[2:] if app.host.startswith("*.") else app.host
            table.setdefault(key, []).append(app)
        for table in (self._exact, self._wild):
            for key in table:
                table[key].sort(key=lambda a: a.specificity, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._exact or self._wild)

    def covers_host(self, host: str) -> bool:
        """Whether any application (on any path) is on this host."""
        if host in self._exact:
            return True
        labels = host.split(".")
        return any(".".join(labels[i:]) in self._wild for i in range(1, len(labels)))

    def find(self, host: str, normalized_path: str) -> Application | None:
        for app in self._exact.get(host, ()):
            if app.covers_path(normalized_path):
                return app
        # wildcard: *.example.com covers any depth below example.com, not the apex
        labels = host.split(".")
        for i in range(1, len(labels)):
            for app in self._wild.get(".".join(labels[i:]), ()):
                if app.covers_path(normalized_path):
                    return app
        return None
