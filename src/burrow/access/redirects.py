"""Validation of `redirect_url` values for the login flow (no open redirect).

A redirect target is accepted only as a path on the application itself: a path-absolute
reference (`/x?y`) or an absolute http(s) URL whose authority is exactly the app's host (no
user-info). Anything a browser could read as another origin is refused: scheme-relative `//h`,
backslashes (`/\\h`, browsers treat `\\` as `/`), control characters and whitespace (browsers
strip tabs and newlines, so `/\\t/h` is `//h`), and the same forms percent-encoded once or
several times, and embedded URLs (`//` or `:/` anywhere, also in the query) and markup
characters, which no application path needs. The edge then always answers with an absolute `Location` built from the app's
own authority, so even an accepted odd path cannot leave the app.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

_MAX = 4096
_SUSPECT_CHARS = "<>\"'`"


def _unsafe_chars(text: str) -> bool:
    return any(ord(c) < 0x21 or ord(c) == 0x7F or c == "\\" for c in text)


def _decodings(text: str) -> list[str]:
    out = [text]
    for _ in range(4):
        nxt = unquote(out[-1])
        if nxt == out[-1]:
            break
        out.append(nxt)
    return out


def safe_redirect(value: str, app_host: str) -> str | None:
    """The same-app path (with query) to return to, or None when `value` must be refused."""
    if not value:
        return "/"
    if len(value) > _MAX or not value.isascii():
        return None
    if value.startswith("/"):
        path = value
    else:
        parts = urlsplit(value)
        if parts.scheme.lower() not in ("http", "https") or not value.lower().startswith(
            parts.scheme.lower() + "://"
        ):
            return None
        if "@" in parts.netloc or parts.hostname is None:
            return None
        host = parts.hostname.rstrip(".").lower()
        if host != app_host.lower():
            return None
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            return None
        path = (parts.path or "/") + (("?" + parts.query) if parts.query else "")
        if parts.fragment:
            return None
    for form in _decodings(path):
        if _unsafe_chars(form) or any(c in form for c in _SUSPECT_CHARS):
            return None
        # `//` anywhere (`/x//evil`, `?next=//evil`) and `://` are how embedded URLs look:
        # no application path needs them, and origins that redirect on them exist.
        if not form.startswith("/") or "//" in form or ":/" in form:
            return None
    if "#" in path:
        return None
    return path
