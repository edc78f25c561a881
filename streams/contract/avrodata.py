"""Avro `data` of an event, per schema version: strict checks, Avro binary and plain JSON.

Every published schema version is compiled once (`data_binding`) into the checking tree of
`streams.contract.avronodes`; fastavro writes and reads the bytes. The CloudEvents bindings in
`streams.contract.codec` put these around the envelope.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from streams.contract.avronodes import (
    DataErrors,
    Node,
    compile_schema,
    format_time,
    parse_time,
    under,
)
from streams.contract.envelope import CloudEvent
from streams.contract.schemas import SchemaRegistry, SchemaVersion, registry
from streams.exceptions import FieldError, InvalidEvent, UndecodableEvent

__all__ = [
    "DataBinding",
    "DataErrors",
    "data_binding",
    "data_errors",
    "decode_data",
    "encode_data",
    "format_time",
    "parse_time",
    "read_data",
    "write_data",
    "writer_binding",
]


@dataclass(frozen=True, slots=True)
class DataBinding:
    """One schema version compiled: `root` checks and converts its data, `reading` reads it."""

    version: SchemaVersion
    root: Node
    # The writer schema without uuid logical types: fastavro would read them as uuid.UUID.
    reading: Any = field(repr=False)
    # `root.read_exact()`: what `is_exact` still has to look at in data read with this schema.
    _read_exact: Callable[[Any], bool] | None = field(default=None, repr=False)
    # A boolean: fastavro reads any byte but 0 as true, Java's reader only 1 (`written`).
    _has_boolean: bool = field(default=False, repr=False)

    def written(self, data: Mapping[str, Any], payload: bytes) -> bytes:
        """The bytes to pass on for `data`, exact and read from `payload` with this version:
        `payload` itself when it has no varint longer than it need be (fastavro reads those,
        Java's reader refuses them past 5 or 10 bytes) and no boolean, else `data` written
        again. A padded varint ends in a zero byte after one with its high bit set; the
        pair may also be string or double bytes, which only costs the writing."""
        if self._has_boolean or _PADDED.search(payload) is not None:
            return write_data(self, data)
        return payload

    def is_exact_read(self, data: Mapping[str, Any]) -> bool:
        """`root.is_exact(data)` for `data` that `read_data` read with this version as both
        writer and reader schema, looking only at what fastavro does not guarantee."""
        return self._read_exact is None or self._read_exact(data)


_BINDINGS: dict[SchemaVersion, DataBinding] = {}
_PADDED: Final = re.compile(rb"[\x80-\xff]\x00")


def data_binding(version: SchemaVersion) -> DataBinding:
    """The binding of one schema version, compiled on first use."""
    found = _BINDINGS.get(version)
    if found is None:
        schema = version.schema
        root = compile_schema(schema, {}, schema.get("__named_schemas", {}))
        reading = parse_schema(_without_uuid(version.raw), named_schemas={})
        boolean = '"boolean"' in json.dumps(version.raw)
        found = DataBinding(version, root, reading, root.read_exact(), boolean)
        _BINDINGS[version] = found
    return found


def _without_uuid(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_uuid(n) for n in node]
    if not isinstance(node, dict):
        return node
    if node.get("logicalType") == "uuid":
        return {k: v for k, v in node.items() if k != "logicalType"}
    return {k: _without_uuid(v) for k, v in node.items()}


def data_errors(errors: DataErrors, prefix: str = "") -> list[FieldError]:
    """Errors of the data as `FieldError`s, each path under `data` (`[3].data` in a batch)."""
    return [FieldError(p, c, m) for p, c, m in under(prefix + "data", errors)]


# --- Avro binary ---------------------------------------------------------------------------


def writer_binding(event: CloudEvent, reg: SchemaRegistry | None) -> DataBinding:
    """The binding `event.dataschema` names; `InvalidEvent` if it is of another type."""
    version = (reg or registry()).by_dataschema(event.dataschema)
    if version.type != event.type:
        raise InvalidEvent(
            [FieldError("dataschema", "dataschema_mismatch", "names a schema of another type")]
        )
    return data_binding(version)


def encode_data(event: CloudEvent, *, registry: SchemaRegistry | None = None) -> bytes:
    """The Avro binary of `event.data`, written with the schema `event.dataschema` names.

    Strict: a missing field without default, an unknown field or a value of the wrong type is
    an `InvalidEvent` listing every such error, each with its `data.` path.
    """
    binding = writer_binding(event, registry)
    errors = binding.root.check(event.data)
    if errors:
        raise InvalidEvent(data_errors(errors))
    # The check above is fastavro's strict mode and more (types, ranges), for all fields at once.
    return write_data(binding, event.data)


def write_data(binding: DataBinding, data: Mapping[str, Any]) -> bytes:
    """The Avro binary of `data`, which the caller has checked (`root.check` or `is_exact`)."""
    out = io.BytesIO()
    schemaless_writer(out, binding.version.schema, data)
    return out.getvalue()


def decode_data(
    dataschema: str, payload: bytes, *, registry: SchemaRegistry | None = None
) -> dict[str, Any]:
    """Read Avro bytes written with the schema `dataschema` names into the current schema."""
    reg = registry or _default_registry()
    writer = data_binding(reg.by_dataschema(dataschema))
    return read_data(writer, reg.current(writer.version.type), payload)


def read_data(writer: DataBinding, current: SchemaVersion, payload: bytes) -> dict[str, Any]:
    """Read Avro bytes written with `writer`'s schema into the `current` schema version."""
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
