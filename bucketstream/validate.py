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


#: The longest cost a request or report may give, in decimal digits (below 10**15 tokens).
MAX_COST_DIGITS = 15


def parse_cost(headers) -> int:
    """The ``X-Cost`` header of a request (already known to be there): a whole number of
    tokens ≥ 1 in plain decimal digits, or BadRequest naming what is wrong with it."""
    values = headers.getall("X-Cost")
    if len(values) > 1:
        raise BadRequest("X-Cost header given more than once")
    value = values[0]
    if not (value.isascii() and value.isdigit()):
        raise BadRequest(f"X-Cost must be a whole number of tokens in decimal digits, got {value[:40]!r}")
    if len(value) > MAX_COST_DIGITS:
        raise BadRequest(f"X-Cost must be below 10**{MAX_COST_DIGITS} tokens")
    cost = int(value)
    if cost < 1:
        raise BadRequest("X-Cost must be at least 1")
    return cost


def parse_report_id(headers) -> str:
    """The ``X-Report-ID`` of a report: 1-128 bytes, no control characters."""
    values = headers.getall("X-Report-ID", ())
    if not values:
        raise BadRequest("missing X-Report-ID header (a report needs an id: the same id is charged once)")
    if len(values) > 1:
        raise BadRequest("X-Report-ID header given more than once")
    value = values[0]
    if len(value.encode("utf-8", "surrogateescape")) > MAX_REPORT_ID_BYTES:
        raise BadRequest(f"X-Report-ID is longer than {MAX_REPORT_ID_BYTES} bytes")
    return check_key(value, "X-Report-ID")


MAX_REPORT_ID_BYTES = 128
