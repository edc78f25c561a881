"""Bindings of the CloudEvent envelope to the wire: Avro data, Kafka records and HTTP bodies.

Pure functions over `CloudEvent` and our own `KafkaRecord` (no Kafka client owns either),
after the cloudevents sdk (SPEC §2). Conversion here is structural only: the semantic rules
(elfproef, postcode, gemeentecode, ...) live in `streams.contract.rules`.

Kafka: binary content mode, `ce_*` headers, value = Avro binary of `data` written with the
schema `ce_dataschema` names. HTTP: structured mode (one event or a batch) or binary mode
(`ce-*` headers), `data` as plain JSON with the Avro field names.

What `data` may hold, and its Avro and JSON forms, is `streams.contract.avrodata`; its
`encode_data`, `decode_data`, `format_time` and `parse_time` are re-exported here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from streams.contract.avrodata import (
    DataBinding,
    data_binding,
    data_errors,
    decode_data,
    encode_data,
    format_time,
    parse_time,
    read_data,
    writer_binding,
)
from streams.contract.envelope import SPECVERSION, CloudEvent
from streams.contract.headers import RawHeaders
from streams.contract.schemas import SchemaRegistry, registry
from streams.exceptions import FieldError, InvalidEvent, UndecodableEvent, UnknownSchema

__all__ = [
    "AVRO_CONTENT_TYPE",
    "BATCH_CONTENT_TYPE",
    "JSON_CONTENT_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "UNSUPPORTED_MEDIA_TYPE",
    "KafkaRecord",
    "Unreadable",
    "decode_data",
    "encode_data",
    "format_time",
    "from_json",
    "from_kafka",
    "from_kafka_with_value",
    "parse_http",
    "parse_time",
    "read_record",
    "to_json",
    "to_kafka",
]

AVRO_CONTENT_TYPE = "application/avro"
JSON_CONTENT_TYPE = "application/json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"

_REQUIRED = ("specversion", "id", "source", "type", "time", "dataschema")
_OPTIONAL = ("subject", "sequence")
_RESERVED = frozenset({*_REQUIRED, *_OPTIONAL, "data", "data_base64", "datacontenttype"})
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
# Errors of the bytes or envelope rather than of the data: these make an UndecodableEvent.
_DATA_CODES_UNDECODABLE = frozenset({"avro_decode", "avro_trailing_bytes"})


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
    header value, a header name that is not text, a value over `max_bytes`.
    """
    raw_headers: list[tuple[str, bytes | None]] = []
    error: FieldError | None = None
    for item in headers or ():
        try:
            name, raw = item
        except (TypeError, ValueError):
            error = error or FieldError("headers", "malformed_header", "a header is not a pair")
            continue
        name = name if isinstance(name, str) else repr(name)
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


def _default_registry() -> SchemaRegistry:
    return registry()


def _raise(errors: list[FieldError]) -> None:
    """Raise the most specific InvalidEvent for these errors (none: nothing to raise)."""
    if not errors:
        return
    codes = {e.code for e in errors}
    if codes == {"unknown_dataschema"}:
        raise UnknownSchema(errors)
    data_codes = {c for c in codes if c.startswith("avro_")} - _DATA_CODES_UNDECODABLE
    raise (InvalidEvent if data_codes else UndecodableEvent)(errors)


# --- context attributes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Place:
    """How one binding names an attribute in its errors (`ce_id`, `ce-id`, `[3].id`)."""

    prefix: str
    missing: str

    def path(self, attribute: str) -> str:
        return self.prefix + attribute


def _envelope(
    attrs: Mapping[str, Any],
    place: _Place,
    reg: SchemaRegistry,
    errors: list[FieldError],
    broken: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], dict[str, str], DataBinding | None]:
    """Check the context attributes; the CloudEvent fields, the extensions and the binding."""
    fields: dict[str, Any] = {}
    for name in (*_REQUIRED, *_OPTIONAL):
        value = attrs.get(name)
        if value is None and name in _REQUIRED and name not in broken:
            errors.append(FieldError(place.path(name), place.missing, "required attribute missing"))
        elif value is not None and (not isinstance(value, str) or not value):
            errors.append(
                FieldError(place.path(name), "invalid_attribute", "not a non-empty string")
            )
        elif value is not None:
            fields[name] = value
    if fields.get("specversion", SPECVERSION) != SPECVERSION:
        errors.append(FieldError(place.path("specversion"), "unsupported_specversion", "not 1.0"))
    if "time" in fields:
        try:
            fields["time"] = parse_time(fields["time"])
        except ValueError:
            errors.append(FieldError(place.path("time"), "invalid_time", "not RFC 3339"))
    extensions: dict[str, str] = {}
    for name, value in attrs.items():
        if name in _RESERVED or value is None:
            continue
        if not _EXTENSION_NAME.match(name):
            errors.append(
                FieldError(place.path(name), "invalid_attribute_name", "not [a-z0-9]{1,20}")
            )
        elif isinstance(value, bool | int | str):
            # CloudEvents' canonical string form of Boolean and Integer attributes.
            extensions[name] = str(value).lower() if isinstance(value, bool) else str(value)
        else:
            errors.append(FieldError(place.path(name), "invalid_attribute", "not a string"))
    binding = None
    if "dataschema" in fields:
        try:
            version = reg.by_dataschema(fields["dataschema"])
        except UnknownSchema as exc:
            errors += [FieldError(place.path("dataschema"), e.code, e.message) for e in exc.errors]
        else:
            if "type" in fields and version.type != fields["type"]:
                message = "names a schema of another type"
                errors.append(FieldError(place.path("dataschema"), "dataschema_mismatch", message))
            else:
                binding = data_binding(version)
    return fields, extensions, binding


def _outgoing_errors(event: CloudEvent) -> list[FieldError]:
    errors = []
    if event.specversion != SPECVERSION:
        errors.append(FieldError("specversion", "unsupported_specversion", "not 1.0"))
    if event.time.utcoffset() is None:
        errors.append(FieldError("time", "invalid_time", "a datetime without time zone"))
    for name, value in event.extensions.items():
        if name in _RESERVED or not _EXTENSION_NAME.match(name):
            errors.append(FieldError(name, "invalid_attribute_name", "not [a-z0-9]{1,20}"))
        elif not isinstance(value, str):  # callers may break the typing
            errors.append(FieldError(name, "invalid_attribute", "not a string"))  # type: ignore[unreachable]
    return errors


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


# --- Kafka ---------------------------------------------------------------------------------


def to_kafka(
    event: CloudEvent,
    *,
    key: bytes | None,
    registry: SchemaRegistry | None = None,
    value: bytes | None = None,
) -> KafkaRecord:
    """The Kafka record of an event: binary content mode, value = Avro binary of `data`.

    `value`: that Avro binary (under `event.dataschema`) when the caller already has it,
    checked or read from Kafka; otherwise `data` is checked and encoded here.
    """
    errors = _outgoing_errors(event)
    if value is None:
        try:
            value = encode_data(event, registry=registry)
        except InvalidEvent as exc:
            errors += exc.errors
    _raise(errors)
    attributes = [
        ("specversion", event.specversion),
        ("id", event.id),
        ("source", event.source),
        ("type", event.type),
        ("time", format_time(event.time)),
        ("subject", event.subject),
        ("dataschema", event.dataschema),
        ("sequence", event.sequence),
        *sorted(event.extensions.items()),
    ]
    headers = [(f"ce_{name}", v.encode()) for name, v in attributes if v is not None]
    headers.append(("content-type", AVRO_CONTENT_TYPE.encode()))
    assert value is not None  # _raise raised when encoding failed
    return KafkaRecord(key=key, headers=tuple(headers), value=value)


def from_kafka(record: KafkaRecord, *, registry: SchemaRegistry | None = None) -> CloudEvent:
    """The event in a Kafka record; `UndecodableEvent` listing every header or Avro problem.

    `data` is resolved into the type's current schema, so `dataschema` names that version.
    """
    return from_kafka_with_value(record, registry=registry)[0]


def from_kafka_with_value(
    record: KafkaRecord, *, registry: SchemaRegistry | None = None
) -> tuple[CloudEvent, bytes | None]:
    """`from_kafka`, and the record's value when it already is the Avro binary of `data` under
    the current schema (written with it: reading and writing again gives the same bytes)."""
    reg = registry or _default_registry()
    errors: list[FieldError] = []
    attrs: dict[str, str] = {}
    broken: set[str] = set()
    for name, raw in record.headers:
        if name.startswith("ce_"):
            attr = name[3:]
        elif name.lower() == "content-type":
            attr = "content-type"
        else:
            continue  # tracing and other headers are not ours to judge
        if attr in attrs or attr in broken:
            errors.append(FieldError(name, "duplicate_header", "header appears more than once"))
            attrs.pop(attr, None)
            broken.add(attr)
            continue
        try:
            attrs[attr] = raw.decode("utf-8")
        except (UnicodeDecodeError, AttributeError):
            errors.append(FieldError(name, "header_encoding", "header value is not UTF-8"))
            broken.add(attr)
    content_type = attrs.pop("content-type", None)
    if content_type is None and "content-type" not in broken:
        errors.append(FieldError("content-type", "missing_header", "required header missing"))
    elif (
        content_type is not None
        and content_type != AVRO_CONTENT_TYPE
        and _media_type(content_type) != AVRO_CONTENT_TYPE
    ):
        errors.append(
            FieldError("content-type", "unsupported_content_type", "not application/avro")
        )
    place = _Place("ce_", "missing_header")
    fields, extensions, binding = _envelope(attrs, place, reg, errors, frozenset(broken))
    data: dict[str, Any] = {}
    value = None
    if binding is not None:
        current = reg.current(binding.version.type)
        try:
            data = read_data(binding, current, record.value)
            fields["dataschema"] = current.dataschema
            if current is binding.version:
                value = bytes(record.value)  # a copy only if it was no `bytes` already
        except InvalidEvent as exc:
            errors += exc.errors
    _raise(errors)
    return CloudEvent(**fields, data=data, extensions=extensions), value


# --- HTTP ----------------------------------------------------------------------------------


def to_json(
    event: CloudEvent, *, registry: SchemaRegistry | None = None, checked: bool = False
) -> dict[str, Any]:
    """The structured-mode JSON of an event; fields absent from `data` stay absent.

    `checked=True` when the bus itself vouches for the event: admitted by the gate or read
    from an events topic, then at most projected. The Avro walk that checks every value is
    skipped then (it is half the cost); the envelope is still checked.
    """
    binding = writer_binding(event, registry)
    found = [] if checked else binding.root.check(event.data) or []
    # A subscriber's projection drops fields on purpose: only wrong values are errors here.
    errors = _outgoing_errors(event) + data_errors(
        [e for e in found if e[1] != "avro_missing_field"]
    )
    _raise(errors)
    out: dict[str, Any] = {
        "specversion": event.specversion,
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "time": format_time(event.time),
    }
    if event.subject is not None:
        out["subject"] = event.subject
    out["datacontenttype"] = JSON_CONTENT_TYPE
    out["dataschema"] = event.dataschema
    if event.sequence is not None:
        out["sequence"] = event.sequence
    out.update(sorted(event.extensions.items()))
    out["data"] = binding.root.to_json(event.data)
    return out


def from_json(obj: Any, *, registry: SchemaRegistry | None = None) -> CloudEvent:
    """The event in a parsed structured-mode JSON object; `data` converted to the Avro form."""
    event, errors = _from_json(obj, registry or _default_registry(), "")
    _raise(errors)
    assert event is not None
    return event


def _from_json(
    obj: Any, reg: SchemaRegistry, prefix: str
) -> tuple[CloudEvent | None, list[FieldError]]:
    if not isinstance(obj, dict):
        where = prefix.rstrip(".") or "body"
        return None, [FieldError(where, "invalid_event", "expected a JSON object")]
    errors: list[FieldError] = []
    if _media_type(obj.get("datacontenttype", JSON_CONTENT_TYPE)) != JSON_CONTENT_TYPE:
        message = "data must be application/json"
        errors.append(
            FieldError(prefix + "datacontenttype", "unsupported_datacontenttype", message)
        )
    if "data_base64" in obj:
        message = "binary data is not accepted"
        errors.append(FieldError(prefix + "data_base64", "unsupported_data_encoding", message))
    elif "data" not in obj:
        errors.append(
            FieldError(prefix + "data", "missing_attribute", "required attribute missing")
        )
    fields, extensions, binding = _envelope(obj, _Place(prefix, "missing_attribute"), reg, errors)
    if "data" not in obj:
        binding = None  # already reported; converting nothing would add a second error
    return _with_data(fields, extensions, binding, obj.get("data"), prefix, errors)


def _with_data(
    fields: dict[str, Any],
    extensions: dict[str, str],
    binding: DataBinding | None,
    data: Any,
    prefix: str,
    errors: list[FieldError],
) -> tuple[CloudEvent | None, list[FieldError]]:
    if binding is not None:
        data, found = binding.root.from_json(data)
        errors += data_errors(found or [], prefix)
    if errors:
        return None, errors
    return CloudEvent(**fields, data=data, extensions=extensions), errors


def parse_http(
    content_type: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    registry: SchemaRegistry | None = None,
) -> list[CloudEvent]:
    """The events of an HTTP request: structured, batch or binary mode.

    Raises `InvalidEvent` listing every error of every event (batch paths start `[index]`);
    an unknown content type raises `UndecodableEvent` with code `unsupported_media_type`.
    """
    reg = registry or _default_registry()
    media = _media_type(content_type)
    if media == STRUCTURED_CONTENT_TYPE:
        return [from_json(_parse_body(body), registry=reg)]
    if media == BATCH_CONTENT_TYPE:
        batch = _parse_body(body)
        if not isinstance(batch, list):
            raise UndecodableEvent([FieldError("body", "invalid_batch", "expected a JSON list")])
        events, errors = [], []
        for index, obj in enumerate(batch):
            event, found = _from_json(obj, reg, f"[{index}].")
            events.append(event)
            errors += found
        _raise(errors)
        return [e for e in events if e is not None]
    if media == JSON_CONTENT_TYPE:
        return [_from_binary_http(headers, body, reg)]
    message = "use application/cloudevents+json, -batch+json or application/json"
    raise UndecodableEvent([FieldError("content-type", UNSUPPORTED_MEDIA_TYPE, message)])


def _from_binary_http(headers: Mapping[str, str], body: bytes, reg: SchemaRegistry) -> CloudEvent:
    errors: list[FieldError] = []
    attrs: dict[str, str] = {}
    broken: set[str] = set()
    for name, value in headers.items():
        lower = name.lower()
        if not lower.startswith("ce-"):
            continue
        attr = lower[3:]
        if attr in attrs or attr in broken:
            errors.append(FieldError(lower, "duplicate_header", "header appears more than once"))
            attrs.pop(attr, None)
            broken.add(attr)
            continue
        try:
            # The HTTP binding percent-encodes what is not printable ASCII.
            attrs[attr] = unquote(value, errors="strict")
        except UnicodeDecodeError:
            errors.append(FieldError(lower, "header_encoding", "not percent-encoded UTF-8"))
            broken.add(attr)
    fields, extensions, binding = _envelope(
        attrs, _Place("ce-", "missing_header"), reg, errors, frozenset(broken)
    )
    event, errors = _with_data(fields, extensions, binding, _parse_body(body), "", errors)
    _raise(errors)
    assert event is not None
    return event


def _parse_body(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise UndecodableEvent([FieldError("body", "invalid_json", "not UTF-8 JSON")]) from exc


def _no_constant(name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")
