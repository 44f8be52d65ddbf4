"""Responses the edge generates itself (errors, not-connected pages).

Each error has a distinct status, a short code and a message that says what went wrong, so a user
can tell "no such hostname" from "tunnel down" from "origin down" at a glance.
"""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EdgeError:
    status: int
    code: int  # Cloudflare-style error number shown on the page
    title: str
    detail: str


UNKNOWN_HOST = EdgeError(
    404, 1001, "Unknown hostname", "No tunnel is routed for this hostname on this edge."
)
TUNNEL_DOWN = EdgeError(
    530,
    1033,
    "Tunnel error",
    "The tunnel routed for this hostname is not connected: no connector is running for it.",
)
TUNNEL_LOST = EdgeError(
    502, 1034, "Bad gateway", "The tunnel connection was lost while the request was in flight."
)
BAD_REQUEST = EdgeError(400, 400, "Bad request", "The request could not be parsed.")


def render(error: EdgeError, host: str, ray: str, detail: str | None = None) -> bytes:
    """A small HTML page; text is escaped (the host comes from the client)."""
    text = html.escape(detail or error.detail)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>Error {error.code}: {html.escape(error.title)}</title></head>\n"
        f"<body><h1>Error {error.code}: {html.escape(error.title)}</h1>\n"
        f"<p>{text}</p>\n<p>Host: {html.escape(host)}<br>Ray ID: {html.escape(ray)}</p>\n"
        "<p>burrow edge</p></body></html>\n"
    ).encode()
