"""Request validation: pure functions, shared by the web views and their tests."""

from __future__ import annotations

import re

from bucketstream.rules import RESOURCE_RE

MAX_KEY_BYTES = 256
#: C0 controls and DEL (TAB included: legal in an HTTP header value, not in a key).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BadRequest(ValueError):
    """A request this service refuses; the message is shown to the client."""


def parse_user(headers) -> str:
    """The ``X-User-ID`` of a request, or BadRequest naming what is wrong with it."""
    values = headers.getall("X-User-ID", ())
    if not values:
        raise BadRequest("missing X-User-ID header")
    if len(values) > 1:
        raise BadRequest("X-User-ID header given more than once")
    return check_key(values[0], "X-User-ID")


def check_key(value: str, what: str) -> str:
    if not value:
        raise BadRequest(f"{what} is empty")
    # ASCII: one byte a character, no encoding needed (the common case)
    if (len(value) if value.isascii() else len(value.encode("utf-8", "surrogateescape"))) > MAX_KEY_BYTES:
        raise BadRequest(f"{what} is longer than {MAX_KEY_BYTES} bytes")
    if _CONTROL.search(value) is not None:
        raise BadRequest(f"{what} contains control characters")
    return value


def check_resource(value: str | None) -> str | None:
    if value is None:
        return None
    if not RESOURCE_RE.match(value):
        raise BadRequest("resource name must be 1-64 characters of A-Z a-z 0-9 . _ ~ -")
    return value
