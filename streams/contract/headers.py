"""The Kafka headers of the bus: the names it writes, and one way to read a header.

Every header the bus writes carries routing or bookkeeping only, never personal data. Readers
take a client's headers as they come (any iterable of pairs, a value may be null or not bytes
at all) and go through `raw_headers`, `header` or `header_text`, which never raise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final, overload

__all__ = [
    "ATTEMPTS_HEADER",
    "DETAIL_HEADER",
    "ERROR_HEADER",
    "ORDER_HEADER",
    "ORIGIN_HEADER",
    "REDACTED",
    "REDRIVEN_HEADER",
    "TRUNCATED_HEADER",
    "RawHeaders",
    "header",
    "header_name",
    "header_text",
    "raw_headers",
    "redacted",
]

# On a dead letter: the stable error code, and the human-readable detail (no personal data).
ERROR_HEADER: Final = "gemeentebus_error"
DETAIL_HEADER: Final = "gemeentebus_error_detail"
# The acceptance order of an events-topic record: nanoseconds since the epoch when this
# process accepted it, strictly increasing per process (ASCII digits, no personal data).
# Replays merge the events topics by record time and break a millisecond's ties with it.
ORDER_HEADER: Final = "gemeentebus_order"
# On a dead letter too large for its topic: what was cut (the original value's size).
TRUNCATED_HEADER: Final = "gemeentebus_truncated"
# On a delivery dead letter: how many attempts were made; where a truncated one came from.
ATTEMPTS_HEADER: Final = "gemeentebus_attempts"
ORIGIN_HEADER: Final = "gemeentebus_origin"
# On a record put back from a DLQ into its deliver topic.
REDRIVEN_HEADER: Final = "gemeentebus_redriven"

# Headers as the bus keeps them: text names, values as bytes or null (as Kafka allows).
RawHeaders = tuple[tuple[str, bytes | None], ...]

# What a dead letter's header holds instead of a value that may be personal data.
REDACTED: Final = b"redacted"
# Context attributes (and the Kafka content type) the NL GOV profile keeps free of personal
# data: a dead letter keeps them as they came, to say what the input claimed to be.
_KEPT: Final = frozenset(
    {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_dataschema",
     "ce_datacontenttype", "ce_sequence", "content-type"}
)  # fmt: skip
_TRACEPARENT: Final = re.compile(rb"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
# Kept when the value has this form, which leaves no room for a BSN.
_KEPT_IF: Final = {
    "ce_subject": re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
    "ce_traceparent": _TRACEPARENT,
    "traceparent": _TRACEPARENT,
}
# A header name with a run of digits this long might be a BSN (or an 8-digit old one).
_DIGITS_IN_NAME: Final = re.compile(r"[0-9]{8}")


def _redacted(name: str, value: bytes | None) -> tuple[str, bytes | None]:
    if name in _KEPT:
        return name, value
    form = _KEPT_IF.get(name)
    if form is not None:
        return name, value if value is None or form.fullmatch(value) else REDACTED
    if _DIGITS_IN_NAME.search(name):
        name = "redacted"
    return name, None if value is None else REDACTED


@overload
def redacted(headers: tuple[tuple[str, bytes], ...]) -> tuple[tuple[str, bytes], ...]: ...
@overload
def redacted(headers: RawHeaders) -> RawHeaders: ...
def redacted(headers: RawHeaders) -> RawHeaders:
    """A client's headers for a dead letter: names and order kept, and every value that may
    carry a BSN (the subject unless a UUID, every extension attribute and every other header
    but the profile's plain context attributes) replaced by `REDACTED`; null stays null."""
    return tuple(_redacted(name, value) for name, value in headers)


def header_name(name: Any) -> tuple[str, bool]:
    """A client's header name as text the bus can write again, and whether it was text: a
    name that is not a `str`, or one read from bytes that are not UTF-8 (kept as lone
    surrogates by `streams.kafka.lenient`), becomes the `repr` of what it was."""
    if not isinstance(name, str):
        return repr(name), False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return repr(name.encode("utf-8", "surrogateescape")), False
    return name, True


def _pair(item: Any) -> tuple[str, bytes | None]:
    try:
        name, value = item
    except (TypeError, ValueError):
        return repr(item), None
    name, _ = header_name(name)
    if isinstance(value, bytes | bytearray | memoryview):
        return name, bytes(value)
    return name, None


def raw_headers(headers: Iterable[Any] | None) -> RawHeaders:
    """A client's headers as `RawHeaders`; never raises. A name that is not text becomes its
    `repr` (`header_name`); a value that is not bytes (or an item that is not a pair) becomes
    null."""
    return tuple(_pair(item) for item in headers or ())


def header(headers: Iterable[Any] | None, name: str) -> bytes | None:
    """The value of the first header called `name`, or None (absent, null, or not bytes)."""
    for item in headers or ():
        found, value = _pair(item)  # one at a time: the first match ends the search
        if found == name:
            return value
    return None


def header_text(headers: Iterable[Any] | None, name: str) -> str | None:
    """`header` decoded as UTF-8 (bytes that are not become U+FFFD), or None."""
    value = header(headers, name)
    return None if value is None else value.decode("utf-8", "replace")
