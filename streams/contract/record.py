"""The Kafka record as the bus holds it, and the one defensive reading of a client's record.

`KafkaRecord` is ours, not any Kafka client's: the codec (`streams.contract.codec`) turns an
event into one and back. `read_record` is where every reader takes a client's record (key,
headers, value as they come): a record of ours, or `Unreadable` kept byte for byte (a null
header value stays null) with the reason, so one odd record becomes a dead letter and never
an exception that skips its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.contract.headers import RawHeaders, header_name
from streams.exceptions import FieldError

__all__ = ["KafkaRecord", "Unreadable", "read_record"]


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaRecord:
    """A Kafka record as the bus reads and writes it, independent of any Kafka client."""

    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    value: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Unreadable:
    """A record that is no `KafkaRecord` of ours, kept exactly as it came (a null header value
    stays null) so that it can be dead-lettered byte for byte, with the reason in `error`."""

    key: bytes | None
    headers: RawHeaders
    value: bytes | None
    error: FieldError


def read_record(key: Any, headers: Any, value: Any, *, max_bytes: int) -> KafkaRecord | Unreadable:
    """A client's record (key, headers, value) as a `KafkaRecord`, or `Unreadable` with why.

    Never raises: every reader converts records here, so one odd record is a dead letter and
    never an exception that skips its neighbours. Refused: a null or non-bytes value or
    header value, a header name that is not UTF-8 text (kept as the `repr` of its bytes), a
    value over `max_bytes`.
    """
    if type(value) is bytes and len(value) <= max_bytes and (key is None or type(key) is bytes):
        pairs = tuple(headers or ())
        if all(_plain_header(pair) for pair in pairs):  # what the loop below keeps as it is
            return KafkaRecord(key=key, headers=pairs, value=value)
    raw_headers: list[tuple[str, bytes | None]] = []
    error: FieldError | None = None
    for item in headers or ():
        try:
            name, raw = item
        except (TypeError, ValueError):
            error = error or FieldError("headers", "malformed_header", "a header is not a pair")
            continue
        name, text = header_name(name)
        if not text:
            error = error or FieldError(
                "headers", "not_utf8_header_name", "a header name is not UTF-8 text"
            )
        if raw is not None and not isinstance(raw, bytes | bytearray | memoryview):
            raw = None
            error = error or FieldError(
                f"headers.{name}", "malformed_header", "a header value is not bytes"
            )
        raw = None if raw is None else bytes(raw)
        if raw is None and error is None:
            error = FieldError(f"headers.{name}", "null_header", "a header value is null")
        raw_headers.append((name, raw))
    if key is not None and not isinstance(key, bytes | bytearray | memoryview):
        key, error = None, error or FieldError("key", "malformed_key", "the key is not bytes")
    key = None if key is None else bytes(key)
    if value is not None and not isinstance(value, bytes | bytearray | memoryview):
        value, error = (
            None,
            error or FieldError("value", "malformed_value", "the value is not bytes"),
        )
    value = None if value is None else bytes(value)
    if value is None and error is None:
        error = FieldError("value", "null_value", "the record has no value (a tombstone)")
    if value is not None and len(value) > max_bytes and error is None:
        error = FieldError(
            "value", "too_large", f"the value has {len(value)} bytes, more than {max_bytes}"
        )
    if error is not None or value is None:
        error = error or FieldError("value", "null_value", "the record has no value")
        return Unreadable(key=key, headers=tuple(raw_headers), value=value, error=error)
    clean = tuple((name, raw) for name, raw in raw_headers if raw is not None)
    return KafkaRecord(key=key, headers=clean, value=value)


def _plain_header(pair: Any) -> bool:
    """A header `read_record` keeps unchanged: a pair of an ASCII name (UTF-8 text) and bytes."""
    return (
        type(pair) is tuple
        and len(pair) == 2
        and type(pair[0]) is str
        and type(pair[1]) is bytes
        and pair[0].isascii()
    )
