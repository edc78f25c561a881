"""Bindings of the CloudEvent envelope to the wire: Avro data, Kafka records and HTTP bodies.

Pure functions over `CloudEvent` and our own `KafkaRecord` (no Kafka client owns either),
after the cloudevents sdk (SPEC §2). Conversion here is structural only: the semantic rules
(elfproef, postcode, gemeentecode, ...) live in `streams.validation`.

Kafka: binary content mode, `ce_*` headers, value = Avro binary of `data` written with the
schema `ce_dataschema` names. HTTP: structured mode (one event or a batch) or binary mode
(`ce-*` headers), `data` as plain JSON with the Avro field names.

Every schema version is compiled once into a tree of nodes (`_compile`) that checks Avro
python data, converts it to JSON and back, and reports every structural error it finds.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from streams.envelope import SPECVERSION, CloudEvent
from streams.exceptions import FieldError, InvalidEvent, UndecodableEvent, UnknownSchema
from streams.schemas import SchemaRegistry, SchemaVersion, registry

__all__ = [
    "AVRO_CONTENT_TYPE",
    "BATCH_CONTENT_TYPE",
    "JSON_CONTENT_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "UNSUPPORTED_MEDIA_TYPE",
    "KafkaRecord",
    "decode_data",
    "encode_data",
    "format_time",
    "from_json",
    "from_kafka",
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

_REQUIRED = ("specversion", "id", "source", "type", "time", "dataschema")
_OPTIONAL = ("subject", "sequence")
_RESERVED = frozenset({*_REQUIRED, *_OPTIONAL, "data", "data_base64", "datacontenttype"})
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Errors of the bytes or envelope rather than of the data: these make an UndecodableEvent.
_DATA_CODES_UNDECODABLE = frozenset({"avro_decode", "avro_trailing_bytes"})

_Errors = list[tuple[str, str, str]]  # (path relative to data, code, message)


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaRecord:
    """A Kafka record as the bus reads and writes it, independent of any Kafka client."""

    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    value: bytes


# --- time ----------------------------------------------------------------------------------


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with `Z`: millisecond precision, microsecond when it has them."""
    if moment.utcoffset() is None:
        raise ValueError("naive datetime")
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    spec = "milliseconds" if utc.microsecond % 1000 == 0 else "microseconds"
    return utc.isoformat(timespec=spec) + "Z"


def parse_time(text: str) -> datetime:
    """Parse RFC 3339 with any offset into an aware UTC datetime; ValueError if it is none."""
    match = _TIME.match(text)
    if match is None:
        raise ValueError("not an RFC 3339 date-time")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micros)
    if offset not in ("Z", "z"):
        sign = -1 if offset[0] == "-" else 1
        moment -= sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
    return moment.replace(tzinfo=UTC)


# --- compiled schema nodes -----------------------------------------------------------------


def _at(name: str, errors: _Errors) -> _Errors:
    return [(name + ("." + p if p and p[0] != "[" else p), c, m) for p, c, m in errors]


class _Node:
    """One schema node: check Avro-python data, convert to plain JSON and back."""

    fast: frozenset[type] = frozenset()  # python types accepted without a closer look

    def check(self, value: Any) -> _Errors | None:
        raise NotImplementedError

    def to_json(self, value: Any) -> Any:
        return value

    def from_json(self, value: Any) -> tuple[Any, _Errors | None]:
        return value, self.check(value)


_INT_RANGE: dict[str, tuple[int, int]] = {
    "int": (-(2**31), 2**31 - 1),
    "long": (-(2**63), 2**63 - 1),
}
_SCALAR_TYPES: dict[str, tuple[type, ...]] = {
    "null": (type(None),),
    "boolean": (bool,),
    "int": (int,),
    "long": (int,),
    "float": (int, float),
    "double": (int, float),
    "string": (str,),
    "bytes": (bytes, bytearray),
}


class _Scalar(_Node):
    def __init__(self, kind: str) -> None:
        self.kind, self.types = kind, _SCALAR_TYPES[kind]
        self.range = _INT_RANGE.get(kind)
        # An int needs its range checked; a float field takes ints too but no bools.
        self.fast = frozenset(
            {float} if kind in ("float", "double") else () if self.range else self.types
        )
        self.wrong = [("", "avro_type", f"expected {kind}")]

    def check(self, value: Any) -> _Errors | None:
        if not isinstance(value, self.types) or (
            isinstance(value, bool) and self.kind != "boolean"
        ):
            return self.wrong
        if self.range and isinstance(value, int) and not self.range[0] <= value <= self.range[1]:
            return [("", "avro_range", f"outside the range of {self.kind}")]
        return None

    def to_json(self, value: Any) -> Any:
        return base64.b64encode(value).decode() if self.kind == "bytes" else value

    def from_json(self, value: Any) -> tuple[Any, _Errors | None]:
        if self.kind == "bytes":
            return _from_base64(value, self.wrong)
        if self.kind in ("float", "double") and not self.check(value):
            return float(value), None
        return value, self.check(value)


class _Fixed(_Node):
    def __init__(self, size: int) -> None:
        self.size, self.wrong = size, [("", "avro_type", f"expected {size} bytes")]

    def check(self, value: Any) -> _Errors | None:
        ok = isinstance(value, bytes | bytearray) and len(value) == self.size
        return None if ok else self.wrong

    def to_json(self, value: Any) -> Any:
        return base64.b64encode(value).decode()

    def from_json(self, value: Any) -> tuple[Any, _Errors | None]:
        raw, errors = _from_base64(value, self.wrong)
        return raw, errors or self.check(raw)


class _Enum(_Node):
    def __init__(self, name: str, symbols: list[str]) -> None:
        self.symbols, self.name = frozenset(symbols), name.rpartition(".")[2]

    def check(self, value: Any) -> _Errors | None:
        if not isinstance(value, str):
            return [("", "avro_type", f"expected a symbol of {self.name}")]
        if value not in self.symbols:
            return [("", "avro_enum", f"not a symbol of {self.name}")]
        return None


class _Date(_Node):
    fast = frozenset({date})  # exact type: a datetime is a date subclass but no Avro date

    def check(self, value: Any) -> _Errors | None:
        ok = isinstance(value, date) and not isinstance(value, datetime)
        return None if ok else [("", "avro_type", "expected a date")]

    def to_json(self, value: Any) -> Any:
        return value.isoformat()

    def from_json(self, value: Any) -> tuple[Any, _Errors | None]:
        if isinstance(value, str) and _DATE.match(value):
            try:
                return date.fromisoformat(value), None
            except ValueError:
                pass
        return value, [("", "avro_logical", "expected a real date as YYYY-MM-DD")]


class _Timestamp(_Node):
    def __init__(self, millis: bool) -> None:
        self.millis = millis

    def check(self, value: Any) -> _Errors | None:
        ok = isinstance(value, datetime) and value.utcoffset() is not None
        return None if ok else [("", "avro_type", "expected a datetime with a time zone")]

    def to_json(self, value: Any) -> Any:
        return format_time(value)

    def from_json(self, value: Any) -> tuple[Any, _Errors | None]:
        try:
            moment = parse_time(value) if isinstance(value, str) else None
        except ValueError:
            moment = None
        if moment is None:
            return value, [("", "avro_logical", "expected an RFC 3339 date-time")]
        # The schema keeps milliseconds: drop the rest now, not silently on the way to Kafka.
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000), None


class _Uuid(_Node):
    def check(self, value: Any) -> _Errors | None:
        ok = isinstance(value, uuid.UUID) or (isinstance(value, str) and _UUID.match(value))
        return None if ok else [("", "avro_logical", "expected a UUID")]

    def to_json(self, value: Any) -> Any:
        return str(value)


class _Array(_Node):
    def __init__(self, items: _Node) -> None:
        self.items = items

    def check(self, value: Any) -> _Errors | None:
        if not isinstance(value, list | tuple):
            return [("", "avro_type", "expected an array")]
        fast = self.items.fast
        if fast and all(type(v) in fast for v in value):
            return None
        errors = [e for i, v in enumerate(value) for e in _at(f"[{i}]", self.items.check(v) or [])]
        return errors or None

    def to_json(self, value: Any) -> Any:
        return [self.items.to_json(v) for v in value]

    def from_json(self, value: Any) -> tuple[Any, _Errors | None]:
        if not isinstance(value, list):
            return value, [("", "avro_type", "expected an array")]
        out, errors = [], []
        for i, item in enumerate(value):
            converted, item_errors = self.items.from_json(item)
            out.append(converted)
            errors += _at(f"[{i}]", item_errors or [])
        return out, errors or None


class _Map(_Node):
    def __init__(self, values: _Node) -> None:
        self.values = values

    def check(self, value: Any) -> _Errors | None:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            return [("", "avro_type", "expected a map with string keys")]
        errors = [e for k, v in value.items() for e in _at(k, self.values.check(v) or [])]
        return errors or None

    def to_json(self, value: Any) -> Any:
        return {k: self.values.to_json(v) for k, v in value.items()}

    def from_json(self, value: Any) -> tuple[Any, _Errors | None]:
        if not isinstance(value, dict):
            return value, [("", "avro_type", "expected an object")]
        out, errors = {}, []
        for key, item in value.items():
            out[key], item_errors = self.values.from_json(item)
            errors += _at(key, item_errors or [])
        return out, errors or None


class _Union(_Node):
    def __init__(self, branches: list[_Node]) -> None:
        self.branches = branches
        self.fast = frozenset().union(*(b.fast for b in branches))
        # With one non-null branch its own errors say more than "matches no branch".
        others = [b for b in branches if not (isinstance(b, _Scalar) and b.kind == "null")]
        self.only = others[0] if len(others) == 1 else None
        self.wrong = [("", "avro_type", "matches no type of the union")]

    def _branch(self, value: Any) -> _Node | None:
        return next((b for b in self.branches if b.check(value) is None), None)

    def check(self, value: Any) -> _Errors | None:
        if self.only is not None and len(self.branches) == 2:  # the common ["null", X]
            return None if value is None else self.only.check(value)
        if self._branch(value) is not None:
            return None
        return self.only.check(value) if self.only and value is not None else self.wrong

    def to_json(self, value: Any) -> Any:
        branch = self._branch(value)
        return branch.to_json(value) if branch else value

    def from_json(self, value: Any) -> tuple[Any, _Errors | None]:
        for branch in self.branches:
            converted, errors = branch.from_json(value)
            if errors is None:
                return converted, None
        if self.only and value is not None:
            return self.only.from_json(value)
        return value, self.wrong


class _Record(_Node):
    def __init__(self, name: str) -> None:
        self.name = name
        self.fields: list[tuple[str, _Node, bool, Any]] = []  # name, node, has default, default
        self.names: frozenset[str] = frozenset()
        self.checks: list[tuple[str, frozenset[type], Callable[[Any], _Errors | None], bool]] = []

    def set_fields(self, fields: list[tuple[str, _Node, bool, Any]]) -> None:
        self.fields, self.names = fields, frozenset(f[0] for f in fields)
        self.checks = [(name, node.fast, node.check, has) for name, node, has, _ in fields]

    def _shape(self, value: Mapping[str, Any]) -> _Errors:
        unknown = [(k, "avro_unknown_field", "not a field of the schema") for k in value]
        return [e for e in unknown if e[0] not in self.names]

    def check(self, value: Any) -> _Errors | None:
        if type(value) is not dict and not isinstance(value, Mapping):
            return [("", "avro_type", "expected a record")]
        errors: _Errors | None = None
        for name, fast, check, has_default in self.checks:
            if name in value:
                item = value[name]
                if type(item) in fast or (found := check(item)) is None:
                    continue
                errors = (errors or []) + _at(name, found)
            elif not has_default:
                errors = (errors or []) + [(name, "avro_missing_field", "required field missing")]
        if not self.names.issuperset(value):
            errors = (errors or []) + [(str(k), c, m) for k, c, m in self._shape(value)]
        return errors

    def to_json(self, value: Any) -> Any:
        return {
            name: node.to_json(value[name]) for name, node, _, _ in self.fields if name in value
        }

    def from_json(self, value: Any) -> tuple[Any, _Errors | None]:
        if not isinstance(value, dict):
            return value, [("", "avro_type", "expected an object")]
        out, errors = {}, self._shape(value)
        for name, node, has_default, default in self.fields:
            if name in value:
                out[name], found = node.from_json(value[name])
                errors += _at(name, found or [])
            elif has_default:
                out[name] = copy.deepcopy(default)
            else:
                errors.append((name, "avro_missing_field", "required field missing"))
        return out, errors or None


def _from_base64(value: Any, wrong: _Errors) -> tuple[Any, _Errors | None]:
    try:
        return base64.b64decode(value, validate=True), None
    except (TypeError, ValueError, binascii.Error):
        return value, wrong


def _compile(schema: Any, named: dict[str, _Record | _Node], raw_named: Mapping[str, Any]) -> _Node:
    """Compile a fastavro-parsed schema into nodes; named types compiled once, recursion safe."""
    if isinstance(schema, list):
        return _Union([_compile(s, named, raw_named) for s in schema])
    if isinstance(schema, str):
        if schema in _SCALAR_TYPES:
            return _Scalar(schema)
        if schema not in named:
            named[schema] = _compile(raw_named[schema], named, raw_named)
        return named[schema]
    kind, logical = schema["type"], schema.get("logicalType")
    if logical == "date" and kind == "int":
        return _Date()
    if logical in ("timestamp-millis", "timestamp-micros") and kind == "long":
        return _Timestamp(logical == "timestamp-millis")
    if logical == "uuid" and kind == "string":
        return _Uuid()
    if logical in ("decimal", "time-millis", "time-micros") or str(logical).startswith("local-"):
        raise ValueError(f"logical type {logical} is not supported by the codec")
    if kind in ("record", "error"):
        record = named[schema["name"]] = _Record(schema["name"])
        assert isinstance(record, _Record)
        fields = []
        for f in schema["fields"]:
            node = _compile(f["type"], named, raw_named)
            fields.append(
                (f["name"], node, "default" in f, _python_default(node, f.get("default")))
            )
        record.set_fields(fields)
        return record
    if kind == "enum":
        named[schema["name"]] = node = _Enum(schema["name"], schema["symbols"])
        return node
    if kind == "fixed":
        named[schema["name"]] = node = _Fixed(schema["size"])
        return node
    if kind == "array":
        return _Array(_compile(schema["items"], named, raw_named))
    if kind == "map":
        return _Map(_compile(schema["values"], named, raw_named))
    return _compile(kind, named, raw_named)


def _python_default(node: _Node, default: Any) -> Any:
    """An Avro JSON field default as the python value fastavro would read."""
    if isinstance(node, _Union):
        node = node.branches[0]  # Avro: a union's default belongs to its first branch
    if isinstance(node, _Date) and isinstance(default, int):
        return _EPOCH.date() + timedelta(days=default)
    if isinstance(node, _Timestamp) and isinstance(default, int):
        return _EPOCH + timedelta(**{"milliseconds" if node.millis else "microseconds": default})
    return default


@dataclass(frozen=True, slots=True)
class _Binding:
    """What the codec needs of one schema version, computed once."""

    version: SchemaVersion
    root: _Node
    # The writer schema without uuid logical types: fastavro would read them as uuid.UUID.
    reading: Any = field(repr=False)


_BINDINGS: dict[SchemaVersion, _Binding] = {}


def _binding(version: SchemaVersion) -> _Binding:
    found = _BINDINGS.get(version)
    if found is None:
        schema = version.schema
        root = _compile(schema, {}, schema.get("__named_schemas", {}))
        reading = parse_schema(_without_uuid(version.raw), named_schemas={})
        found = _BINDINGS[version] = _Binding(version, root, reading)
    return found


def _without_uuid(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_uuid(n) for n in node]
    if not isinstance(node, dict):
        return node
    if node.get("logicalType") == "uuid":
        return {k: v for k, v in node.items() if k != "logicalType"}
    return {k: _without_uuid(v) for k, v in node.items()}


def _data_errors(errors: _Errors, prefix: str = "") -> list[FieldError]:
    return [FieldError(_join_path(prefix + "data", p), c, m) for p, c, m in errors]


def _join_path(parent: str, child: str) -> str:
    """`parent.child`, or `parent[3]` for an index, or `parent` for an empty child."""
    return parent + ("." + child if child and child[0] != "[" else child)


def _raise(errors: list[FieldError]) -> None:
    """Raise the most specific InvalidEvent for these errors (none: nothing to raise)."""
    if not errors:
        return
    codes = {e.code for e in errors}
    if codes == {"unknown_dataschema"}:
        raise UnknownSchema(errors)
    data_codes = {c for c in codes if c.startswith("avro_")} - _DATA_CODES_UNDECODABLE
    raise (InvalidEvent if data_codes else UndecodableEvent)(errors)


# --- Avro ----------------------------------------------------------------------------------


def _writer(event: CloudEvent, reg: SchemaRegistry | None) -> _Binding:
    version = (reg or registry()).by_dataschema(event.dataschema)
    if version.type != event.type:
        raise InvalidEvent(
            [FieldError("dataschema", "dataschema_mismatch", "names a schema of another type")]
        )
    return _binding(version)


def encode_data(event: CloudEvent, *, registry: SchemaRegistry | None = None) -> bytes:
    """The Avro binary of `event.data`, written with the schema `event.dataschema` names.

    Strict: a missing field without default, an unknown field or a value of the wrong type is
    an `InvalidEvent` listing every such error, each with its `data.` path.
    """
    binding = _writer(event, registry)
    errors = binding.root.check(event.data)
    if errors:
        raise InvalidEvent(_data_errors(errors))
    out = io.BytesIO()
    # The check above is fastavro's strict mode and more (types, ranges), for all fields at once.
    schemaless_writer(out, binding.version.schema, event.data)
    return out.getvalue()


def decode_data(
    dataschema: str, payload: bytes, *, registry: SchemaRegistry | None = None
) -> dict[str, Any]:
    """Read Avro bytes written with the schema `dataschema` names into the current schema."""
    reg = registry or _default_registry()
    writer = _binding(reg.by_dataschema(dataschema))
    current = reg.current(writer.version.type)
    reader = None if current is writer.version else current.schema
    stream = io.BytesIO(payload)
    try:
        data = schemaless_reader(stream, writer.reading, reader)
    except (EOFError, StopIteration, ValueError, TypeError, IndexError, KeyError) as exc:
        raise UndecodableEvent(
            [FieldError("data", "avro_decode", "not Avro binary of the named schema")]
        ) from exc
    if stream.tell() != len(payload):
        raise UndecodableEvent(
            [FieldError("data", "avro_trailing_bytes", "bytes left after the record")]
        )
    if not isinstance(data, dict):
        raise UndecodableEvent([FieldError("data", "avro_decode", "not an Avro record")])
    return data


def _default_registry() -> SchemaRegistry:
    return registry()


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
) -> tuple[dict[str, Any], dict[str, str], _Binding | None]:
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
                binding = _binding(version)
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
    event: CloudEvent, *, key: bytes | None, registry: SchemaRegistry | None = None
) -> KafkaRecord:
    """The Kafka record of an event: binary content mode, value = Avro binary of `data`."""
    errors = _outgoing_errors(event)
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
    return KafkaRecord(key=key, headers=tuple(headers), value=value)


def from_kafka(record: KafkaRecord, *, registry: SchemaRegistry | None = None) -> CloudEvent:
    """The event in a Kafka record; `UndecodableEvent` listing every header or Avro problem.

    `data` is resolved into the type's current schema, so `dataschema` names that version.
    """
    reg = registry or _default_registry()
    errors: list[FieldError] = []
    attrs: dict[str, str] = {}
    broken: set[str] = set()
    for name, raw in record.headers:
        lower = name.lower()
        attr = lower if lower == "content-type" else name[3:] if name.startswith("ce_") else None
        if attr is None:
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
    elif content_type is not None and _media_type(content_type) != AVRO_CONTENT_TYPE:
        errors.append(
            FieldError("content-type", "unsupported_content_type", "not application/avro")
        )
    place = _Place("ce_", "missing_header")
    fields, extensions, binding = _envelope(attrs, place, reg, errors, frozenset(broken))
    data: dict[str, Any] = {}
    if binding is not None:
        try:
            data = decode_data(binding.version.dataschema, record.value, registry=reg)
            fields["dataschema"] = reg.current(binding.version.type).dataschema
        except InvalidEvent as exc:
            errors += exc.errors
    _raise(errors)
    return CloudEvent(**fields, data=data, extensions=extensions)


# --- HTTP ----------------------------------------------------------------------------------


def to_json(event: CloudEvent, *, registry: SchemaRegistry | None = None) -> dict[str, Any]:
    """The structured-mode JSON of an event; fields absent from `data` stay absent."""
    binding = _writer(event, registry)
    found = binding.root.check(event.data) or []
    # A subscriber's projection drops fields on purpose: only wrong values are errors here.
    errors = _outgoing_errors(event) + _data_errors(
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
    binding: _Binding | None,
    data: Any,
    prefix: str,
    errors: list[FieldError],
) -> tuple[CloudEvent | None, list[FieldError]]:
    if binding is not None:
        data, found = binding.root.from_json(data)
        errors += _data_errors(found or [], prefix)
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
