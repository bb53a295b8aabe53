"""Domain errors: what went wrong, in the domain's words (a code and a message for people).

The service layer, the policy and the use cases raise these; they know nothing of HTTP. The HTTP
layer maps each class to a status in one place (`control.http.STATUS`); the CLI prints them.
`extra` carries JSON-safe details the API adds to its error object (ids, limits, holders).
"""
from __future__ import annotations

from typing import Any


class DomainError(Exception):
    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.extra = code, message, extra


class NotFound(DomainError):
    """The thing named does not exist (a zone, receiver, user, media item, broadcast...)."""


class Conflict(DomainError):
    """The request contradicts the current state (an id taken, a zone still in use, a zone
    busy with a live talker, a broadcast that has already ended...)."""


class Invalid(DomainError):
    """The request itself is wrong (a malformed address, a bad CSV line, an unknown role...)."""


class Forbidden(DomainError):
    """The caller may not do this (level above its role, zones outside its scope...)."""

    def __init__(self, message: str, code: str = "forbidden", **extra: Any) -> None:
        super().__init__(code, message, **extra)


class TooLarge(DomainError):
    """More than a limit allows (rows in a file, receivers in one request)."""


class TooMany(DomainError):
    """A resource limit of the caller, a zone or the server is reached (broadcasts active,
    starts per minute, decoders, event streams): refused with the reason, retry later."""
