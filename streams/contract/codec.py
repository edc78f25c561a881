"""Bindings of the CloudEvent envelope to the wire: Avro data, Kafka records and HTTP bodies.

Pure functions over `CloudEvent` and our own `KafkaRecord` (`streams.contract.record`; no
Kafka client owns either), after the cloudevents sdk (SPEC §2). How the context attributes
are checked and read from `ce_*` / `ce-*` headers, the same for both bindings, is
`streams.contract.context`. Conversion here is structural only: the semantic rules
(elfproef, postcode, gemeentecode, ...) live in `streams.contract.rules`.

Kafka: binary content mode, `ce_*` headers, value = Avro binary of `data` written with the
schema `ce_dataschema` names. HTTP: structured mode (one event or a batch) or binary mode
(`ce-*` headers), `data` as plain JSON with the Avro field names.

What `data` may hold, and its Avro and JSON forms, is `streams.contract.avrodata`; its
`encode_data`, `decode_data`, `format_time` and `parse_time` are re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from streams.contract.avrodata import (
    DataBinding,
    data_errors,
    decode_data,
    encode_data,
    format_time,
    parse_time,
    read_data,
    writer_binding,
)
from streams.contract.context import (
    Place,
    header_attributes,
    media_type,
    outgoing_errors,
    raise_for,
    read_context,
)
from streams.contract.envelope import CloudEvent
from streams.contract.record import KafkaRecord
from streams.contract.schemas import SchemaRegistry, registry
from streams.exceptions import FieldError, InvalidEvent, UndecodableEvent

__all__ = [
    "AVRO_CONTENT_TYPE",
    "BATCH_CONTENT_TYPE",
    "JSON_CONTENT_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "UNSUPPORTED_MEDIA_TYPE",
    "decode_data",
    "encode_data",
    "format_time",
    "from_json",
    "from_kafka",
    "from_kafka_with_value",
    "parse_http",
    "parse_time",
    "to_json",
    "to_kafka",
]

AVRO_CONTENT_TYPE = "application/avro"
JSON_CONTENT_TYPE = "application/json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"


def _default_registry() -> SchemaRegistry:
    return registry()


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
    errors = outgoing_errors(event)
    if value is None:
        try:
            value = encode_data(event, registry=registry)
        except InvalidEvent as exc:
            errors += exc.errors
    raise_for(errors)
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
    assert value is not None  # raise_for raised when encoding failed
    return KafkaRecord(key=key, headers=tuple(headers), value=value)


def from_kafka(record: KafkaRecord, *, registry: SchemaRegistry | None = None) -> CloudEvent:
    """The event in a Kafka record; `UndecodableEvent` listing every header or Avro problem.

    `data` is resolved into the type's current schema, so `dataschema` names that version.
    """
    return from_kafka_with_value(record, registry=registry)[0]


def from_kafka_with_value(
    record: KafkaRecord, *, registry: SchemaRegistry | None = None
) -> tuple[CloudEvent, bytes | None]:
    """`from_kafka`, and the record's value when it was written with the current schema, so
    `data` is what fastavro read with it (`DataBinding.is_exact_read` suffices). Not always
    bytes to pass on: fastavro reads varints longer than they need be (`DataBinding.written`)."""
    reg = registry or _default_registry()
    errors: list[FieldError] = []
    attrs, broken = header_attributes(
        record.headers, "ce_", _utf8, "header value is not UTF-8", errors, also=("content-type",)
    )
    content_type = attrs.pop("content-type", None)
    if content_type is None and "content-type" not in broken:
        errors.append(FieldError("content-type", "missing_header", "required header missing"))
    elif (
        content_type is not None
        and content_type != AVRO_CONTENT_TYPE
        and media_type(content_type) != AVRO_CONTENT_TYPE
    ):
        errors.append(
            FieldError("content-type", "unsupported_content_type", "not application/avro")
        )
    place = Place("ce_", "missing_header")
    fields, extensions, binding = read_context(attrs, place, reg, errors, broken)
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
    raise_for(errors)
    return CloudEvent(**fields, data=data, extensions=extensions), value


def _utf8(raw: Any) -> str | None:
    try:
        return str(raw.decode("utf-8"))
    except (UnicodeDecodeError, AttributeError):
        return None


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
    errors = outgoing_errors(event) + data_errors(
        [e for e in found if e[1] != "avro_missing_field"]
    )
    raise_for(errors)
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
    raise_for(errors)
    assert event is not None
    return event


def _from_json(
    obj: Any, reg: SchemaRegistry, prefix: str
) -> tuple[CloudEvent | None, list[FieldError]]:
    if not isinstance(obj, dict):
        where = prefix.rstrip(".") or "body"
        return None, [FieldError(where, "invalid_event", "expected a JSON object")]
    errors: list[FieldError] = []
    content_type = obj.get("datacontenttype", JSON_CONTENT_TYPE)
    if not isinstance(content_type, str):
        message = "datacontenttype: a string"
        errors.append(FieldError(prefix + "datacontenttype", "invalid_attribute", message))
    elif media_type(content_type) != JSON_CONTENT_TYPE:
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
    fields, extensions, binding = read_context(obj, Place(prefix, "missing_attribute"), reg, errors)
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
    media = media_type(content_type)
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
        raise_for(errors)
        return [e for e in events if e is not None]
    if media == JSON_CONTENT_TYPE:
        return [_from_binary_http(headers, body, reg)]
    message = "use application/cloudevents+json, -batch+json or application/json"
    raise UndecodableEvent([FieldError("content-type", UNSUPPORTED_MEDIA_TYPE, message)])


def _from_binary_http(headers: Mapping[str, str], body: bytes, reg: SchemaRegistry) -> CloudEvent:
    errors: list[FieldError] = []
    lowered = [(name.lower(), value) for name, value in headers.items()]
    attrs, broken = header_attributes(
        lowered, "ce-", _percent_decoded, "not percent-encoded UTF-8", errors
    )
    fields, extensions, binding = read_context(
        attrs, Place("ce-", "missing_header"), reg, errors, broken
    )
    event, errors = _with_data(fields, extensions, binding, _parse_body(body), "", errors)
    raise_for(errors)
    assert event is not None
    return event


def _percent_decoded(value: Any) -> str | None:
    try:
        # The HTTP binding percent-encodes what is not printable ASCII.
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        return None


def _parse_body(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise UndecodableEvent([FieldError("body", "invalid_json", "not UTF-8 JSON")]) from exc


def _no_constant(name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")
