"""The one error hierarchy of burrow.

Every error carries an HTTP status hint so that whichever layer catches it can answer an
eyeball sensibly, and a `retryable` flag that drives the connector's reconnect policy.
"""

from __future__ import annotations


class BurrowError(Exception):
    """Root of all burrow errors."""

    status: int = 500
    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None, retryable: bool | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        if retryable is not None:
            self.retryable = retryable


class ConfigError(BurrowError):
    """A configuration file, flag or credential is invalid. Never retryable."""

    status = 500


class ProtocolError(BurrowError):
    """The peer violated a protocol (local parse failure of remote bytes)."""

    status = 400


class RemoteProtocolError(ProtocolError):
    """The remote side sent something we cannot accept."""


class LocalProtocolError(ProtocolError):
    """We were asked to produce something the protocol does not allow."""

    status = 500


class HTTPRequestError(ProtocolError):
    """A malformed eyeball request; `status` is what to answer (400, 414, 431, ...)."""


class RegistrationError(BurrowError):
    """The edge refused a tunnel registration."""

    status = 502

    def __init__(self, cause: str, *, retryable: bool, retry_after_s: float = 0.0):
        super().__init__(cause, retryable=retryable)
        self.cause = cause
        self.retry_after_s = retry_after_s


class OriginError(BurrowError):
    """The connector could not reach or talk to the origin."""

    status = 502
    retryable = True


class StoreError(BurrowError):
    """The state store failed (locked, unreachable, constraint)."""

    status = 503
    retryable = True


class NotFound(BurrowError):
    status = 404


class Conflict(BurrowError):
    status = 409
