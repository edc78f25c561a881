"""The checking tree of one Avro schema: strict checks and plain JSON for Avro-python data.

`compile_schema` turns a fastavro-parsed schema into a tree of nodes. Each node checks
Avro-python data, converts it to JSON and back, and reports every structural error it
finds with its path. `streams.contract.avrodata` binds a tree to each published schema version;
fastavro writes and reads the bytes. RFC 3339 time lives here too: it is how a timestamp of
`data` reads in JSON, and how `time` reads on every binding.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

__all__ = ["DataErrors", "Node", "compile_schema", "format_time", "parse_time", "under"]

_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ISO_UTC_LENGTHS = frozenset({20, 24, 27})  # ...:SSZ, ...:SS.mmmZ, ...:SS.uuuuuuZ

DataErrors = list[tuple[str, str, str]]  # (path relative to data, code, message)
_ABSENT: Any = object()


# --- time ----------------------------------------------------------------------------------


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with `Z`: millisecond precision, microsecond when it has them."""
    if moment.utcoffset() is None:
        raise ValueError("naive datetime")
    # Already in UTC (what parse_time and fastavro give): no conversion needed.
    utc = (moment if moment.tzinfo is UTC else moment.astimezone(UTC)).replace(tzinfo=None)
    spec = "milliseconds" if utc.microsecond % 1000 == 0 else "microseconds"
    return utc.isoformat(timespec=spec) + "Z"


def parse_time(text: str) -> datetime:
    """Parse RFC 3339 with any offset into an aware UTC datetime; ValueError if it is none."""
    match = _TIME.match(text)
    if match is None:
        raise ValueError("not an RFC 3339 date-time")
    if len(text) in _ISO_UTC_LENGTHS and text[10] == "T" and text[-1] == "Z":
        # What to_kafka writes (milli- or microseconds, Z): the C parser reads it the same.
        return datetime.fromisoformat(text)
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micros)
    if offset not in ("Z", "z"):
        sign = -1 if offset[0] == "-" else 1
        moment -= sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
    return moment.replace(tzinfo=UTC)


# --- compiled schema nodes -----------------------------------------------------------------


def under(name: str, errors: DataErrors) -> DataErrors:
    """Errors of a child, their paths now under `name`: `name.child`, `name[3]` or `name`."""
    return [(name + ("." + p if p and p[0] != "[" else p), c, m) for p, c, m in errors]


class Node:
    """One schema node: check Avro-python data, convert to plain JSON and back."""

    fast: frozenset[type] = frozenset()  # python types accepted without a closer look
    exact: frozenset[type] = frozenset()  # types `is_exact` accepts without a closer look
    json_identity = False  # `to_json(v)` is `v` itself for every valid value

    def read_exact(self) -> Callable[[Any], bool] | None:
        """`is_exact` for a value fastavro has just read with this node's schema: only what the
        reader does not guarantee is looked at (an int's range: Avro ints are varints; a
        uuid's form: read as a plain string). None: every value read is exact."""
        return None

    def check(self, value: Any) -> DataErrors | None:
        raise NotImplementedError

    def is_exact(self, value: Any) -> bool:
        """Whether `value` is exactly what fastavro reads for this node: the same types, no
        subclasses, no looser forms (a tuple for a list). Stricter than `check`: a value it
        accepts passes `check` and the generated pydantic model alike."""
        return type(value) in self.exact

    def to_json(self, value: Any) -> Any:
        return value

    def from_json(self, value: Any) -> tuple[Any, DataErrors | None]:
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


class _Scalar(Node):
    def __init__(self, kind: str) -> None:
        self.kind, self.types = kind, _SCALAR_TYPES[kind]
        self.range = _INT_RANGE.get(kind)
        # An int needs its range checked; a float field takes ints too but no bools.
        self.fast = frozenset(
            {float} if kind in ("float", "double") else () if self.range else self.types
        )
        self.wrong = [("", "avro_type", f"expected {kind}")]
        self.exact = frozenset(
            () if self.range else {float} if kind in ("float", "double") else self.types[:1]
        )
        self.json_identity = kind != "bytes"

    def read_exact(self) -> Callable[[Any], bool] | None:
        return self.is_exact if self.range else None

    def is_exact(self, value: Any) -> bool:
        if self.range:
            return type(value) is int and self.range[0] <= value <= self.range[1]
        return type(value) in self.exact

    def check(self, value: Any) -> DataErrors | None:
        if not isinstance(value, self.types) or (
            isinstance(value, bool) and self.kind != "boolean"
        ):
            return self.wrong
        if self.range and isinstance(value, int) and not self.range[0] <= value <= self.range[1]:
            return [("", "avro_range", f"outside the range of {self.kind}")]
        return None

    def to_json(self, value: Any) -> Any:
        return base64.b64encode(value).decode() if self.kind == "bytes" else value

    def from_json(self, value: Any) -> tuple[Any, DataErrors | None]:
        if self.kind == "bytes":
            return _from_base64(value, self.wrong)
        if self.kind in ("float", "double") and not self.check(value):
            return float(value), None
        return value, self.check(value)


class _Fixed(Node):
    def __init__(self, size: int) -> None:
        self.size, self.wrong = size, [("", "avro_type", f"expected {size} bytes")]

    def check(self, value: Any) -> DataErrors | None:
        ok = isinstance(value, bytes | bytearray) and len(value) == self.size
        return None if ok else self.wrong

    def is_exact(self, value: Any) -> bool:
        return type(value) is bytes and len(value) == self.size

    def to_json(self, value: Any) -> Any:
        return base64.b64encode(value).decode()

    def from_json(self, value: Any) -> tuple[Any, DataErrors | None]:
        raw, errors = _from_base64(value, self.wrong)
        return raw, errors or self.check(raw)


class _Enum(Node):
    def __init__(self, name: str, symbols: list[str]) -> None:
        self.symbols, self.name = frozenset(symbols), name.rpartition(".")[2]

    def check(self, value: Any) -> DataErrors | None:
        if not isinstance(value, str):
            return [("", "avro_type", f"expected a symbol of {self.name}")]
        if value not in self.symbols:
            return [("", "avro_enum", f"not a symbol of {self.name}")]
        return None

    def is_exact(self, value: Any) -> bool:
        return type(value) is str and value in self.symbols

    json_identity = True


class _Date(Node):
    fast = exact = frozenset({date})  # a datetime is a date subclass but no Avro date

    def check(self, value: Any) -> DataErrors | None:
        ok = isinstance(value, date) and not isinstance(value, datetime)
        return None if ok else [("", "avro_type", "expected a date")]

    def to_json(self, value: Any) -> Any:
        return value.isoformat()

    def from_json(self, value: Any) -> tuple[Any, DataErrors | None]:
        if isinstance(value, str) and _DATE.match(value):
            try:
                return date.fromisoformat(value), None
            except ValueError:
                pass
        return value, [("", "avro_logical", "expected a real date as YYYY-MM-DD")]


class _Timestamp(Node):
    def __init__(self, millis: bool) -> None:
        self.millis = millis

    def check(self, value: Any) -> DataErrors | None:
        ok = isinstance(value, datetime) and value.utcoffset() is not None
        return None if ok else [("", "avro_type", "expected a datetime with a time zone")]

    def is_exact(self, value: Any) -> bool:
        return type(value) is datetime and value.utcoffset() is not None

    def to_json(self, value: Any) -> Any:
        return format_time(value)

    def from_json(self, value: Any) -> tuple[Any, DataErrors | None]:
        try:
            moment = parse_time(value) if isinstance(value, str) else None
        except ValueError:
            moment = None
        if moment is None:
            return value, [("", "avro_logical", "expected an RFC 3339 date-time")]
        # The schema keeps milliseconds: drop the rest now, not silently on the way to Kafka.
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000), None


class _Uuid(Node):
    def check(self, value: Any) -> DataErrors | None:
        ok = isinstance(value, uuid.UUID) or (isinstance(value, str) and _UUID.match(value))
        return None if ok else [("", "avro_logical", "expected a UUID")]

    def is_exact(self, value: Any) -> bool:
        return type(value) is str and _UUID.match(value) is not None  # as we read it: no UUID

    def read_exact(self) -> Callable[[Any], bool] | None:
        return self.is_exact

    def to_json(self, value: Any) -> Any:
        return str(value)


class _Array(Node):
    def __init__(self, items: Node) -> None:
        self.items = items

    def check(self, value: Any) -> DataErrors | None:
        if not isinstance(value, list | tuple):
            return [("", "avro_type", "expected an array")]
        fast = self.items.fast
        if fast and all(type(v) in fast for v in value):
            return None
        errors = [
            e for i, v in enumerate(value) for e in under(f"[{i}]", self.items.check(v) or [])
        ]
        return errors or None

    def is_exact(self, value: Any) -> bool:
        if type(value) is not list:
            return False
        exact, items = self.items.exact, self.items
        return all(type(v) in exact or items.is_exact(v) for v in value)

    def read_exact(self) -> Callable[[Any], bool] | None:
        check = self.items.read_exact()
        return None if check is None else lambda value: all(check(v) for v in value)

    def to_json(self, value: Any) -> Any:
        if self.items.json_identity:
            return list(value)
        return [self.items.to_json(v) for v in value]

    def from_json(self, value: Any) -> tuple[Any, DataErrors | None]:
        if not isinstance(value, list):
            return value, [("", "avro_type", "expected an array")]
        out, errors = [], []
        for i, item in enumerate(value):
            converted, item_errors = self.items.from_json(item)
            out.append(converted)
            errors += under(f"[{i}]", item_errors or [])
        return out, errors or None


class _Map(Node):
    def __init__(self, values: Node) -> None:
        self.values = values

    def check(self, value: Any) -> DataErrors | None:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            return [("", "avro_type", "expected a map with string keys")]
        errors = [e for k, v in value.items() for e in under(k, self.values.check(v) or [])]
        return errors or None

    def is_exact(self, value: Any) -> bool:
        if type(value) is not dict:
            return False
        values = self.values
        return all(type(k) is str and values.is_exact(v) for k, v in value.items())

    def read_exact(self) -> Callable[[Any], bool] | None:
        check = self.values.read_exact()
        return None if check is None else lambda value: all(check(v) for v in value.values())

    def to_json(self, value: Any) -> Any:
        if self.values.json_identity:
            return dict(value)
        return {k: self.values.to_json(v) for k, v in value.items()}

    def from_json(self, value: Any) -> tuple[Any, DataErrors | None]:
        if not isinstance(value, dict):
            return value, [("", "avro_type", "expected an object")]
        out, errors = {}, []
        for key, item in value.items():
            out[key], item_errors = self.values.from_json(item)
            errors += under(key, item_errors or [])
        return out, errors or None


class _Union(Node):
    def __init__(self, branches: list[Node]) -> None:
        self.branches = branches
        self.fast = frozenset().union(*(b.fast for b in branches))
        self.exact = frozenset().union(*(b.exact for b in branches))
        # With one non-null branch its own errors say more than "matches no branch".
        others = [b for b in branches if not (isinstance(b, _Scalar) and b.kind == "null")]
        self.only = others[0] if len(others) == 1 else None
        self.wrong = [("", "avro_type", "matches no type of the union")]

    def is_exact(self, value: Any) -> bool:
        return type(value) in self.exact or any(b.is_exact(value) for b in self.branches)

    def read_exact(self) -> Callable[[Any], bool] | None:
        # which branch was read is not known here: any that needs a look, the whole check
        return None if all(b.read_exact() is None for b in self.branches) else self.is_exact

    @property
    def json_identity(self) -> bool:  # type: ignore[override]
        return all(b.json_identity for b in self.branches)

    def _branch(self, value: Any) -> Node | None:
        return next((b for b in self.branches if b.check(value) is None), None)

    def check(self, value: Any) -> DataErrors | None:
        if self.only is not None and len(self.branches) == 2:  # the common ["null", X]
            return None if value is None else self.only.check(value)
        if self._branch(value) is not None:
            return None
        return self.only.check(value) if self.only and value is not None else self.wrong

    def to_json(self, value: Any) -> Any:
        branch = self._branch(value)
        return branch.to_json(value) if branch else value

    def from_json(self, value: Any) -> tuple[Any, DataErrors | None]:
        for branch in self.branches:
            converted, errors = branch.from_json(value)
            if errors is None:
                return converted, None
        if self.only and value is not None:
            return self.only.from_json(value)
        return value, self.wrong


class _Record(Node):
    def __init__(self, name: str) -> None:
        self.name = name
        self.fields: list[tuple[str, Node, bool, Any]] = []  # name, node, has default, default
        self.names: frozenset[str] = frozenset()
        self.checks: list[
            tuple[str, frozenset[type], Callable[[Any], DataErrors | None], bool]
        ] = []
        self.exact_checks: list[tuple[str, frozenset[type], Callable[[Any], bool], bool]] = []
        self._json: list[tuple[str, Callable[[Any], Any] | None]] | None = None
        self._reading = False  # computing `read_exact`: a recursive reference checks in full

    def set_fields(self, fields: list[tuple[str, Node, bool, Any]]) -> None:
        self.fields, self.names = fields, frozenset(f[0] for f in fields)
        self.checks = [(name, node.fast, node.check, has) for name, node, has, _ in fields]
        self.exact_checks = [
            (name, node.exact, node.is_exact, has) for name, node, has, _ in fields
        ]

    def is_exact(self, value: Any) -> bool:
        if type(value) is not dict:
            return False
        for name, exact, is_exact, has_default in self.exact_checks:
            if name in value:
                item = value[name]
                if type(item) not in exact and not is_exact(item):
                    return False
            elif not has_default:
                return False
        return self.names.issuperset(value)

    def read_exact(self) -> Callable[[Any], bool] | None:
        if self._reading:
            return self.is_exact
        self._reading = True
        try:
            found = [(name, node.read_exact()) for name, node, _, _ in self.fields]
        finally:
            self._reading = False
        checks = [(name, check) for name, check in found if check is not None]
        if not checks:
            return None
        # fastavro reads every field of the record: each is there
        return lambda value: all(check(value[name]) for name, check in checks)

    def _shape(self, value: Mapping[str, Any]) -> DataErrors:
        unknown = [(k, "avro_unknown_field", "not a field of the schema") for k in value]
        return [e for e in unknown if e[0] not in self.names]

    def check(self, value: Any) -> DataErrors | None:
        if type(value) is not dict and not isinstance(value, Mapping):
            return [("", "avro_type", "expected a record")]
        errors: DataErrors | None = None
        for name, fast, check, has_default in self.checks:
            if name in value:
                item = value[name]
                if type(item) in fast or (found := check(item)) is None:
                    continue
                errors = (errors or []) + under(name, found)
            elif not has_default:
                errors = (errors or []) + [(name, "avro_missing_field", "required field missing")]
        if not self.names.issuperset(value):
            errors = (errors or []) + [(str(k), c, m) for k, c, m in self._shape(value)]
        return errors

    def to_json(self, value: Any) -> Any:
        fields = self._json
        if fields is None:  # on first use: every record node is complete by then
            fields = self._json = [
                (name, None if node.json_identity else node.to_json)
                for name, node, _, _ in self.fields
            ]
        return {
            name: item if convert is None else convert(item)
            for name, convert in fields
            if (item := value.get(name, _ABSENT)) is not _ABSENT
        }

    def from_json(self, value: Any) -> tuple[Any, DataErrors | None]:
        if not isinstance(value, dict):
            return value, [("", "avro_type", "expected an object")]
        out, errors = {}, self._shape(value)
        for name, node, has_default, default in self.fields:
            if name in value:
                out[name], found = node.from_json(value[name])
                errors += under(name, found or [])
            elif has_default:
                out[name] = copy.deepcopy(default)
            else:
                errors.append((name, "avro_missing_field", "required field missing"))
        return out, errors or None


def _from_base64(value: Any, wrong: DataErrors) -> tuple[Any, DataErrors | None]:
    try:
        return base64.b64decode(value, validate=True), None
    except (TypeError, ValueError, binascii.Error):
        return value, wrong


def compile_schema(
    schema: Any, named: dict[str, _Record | Node], raw_named: Mapping[str, Any]
) -> Node:
    """Compile a fastavro-parsed schema into nodes; named types compiled once, recursion safe."""
    if isinstance(schema, list):
        return _Union([compile_schema(s, named, raw_named) for s in schema])
    if isinstance(schema, str):
        if schema in _SCALAR_TYPES:
            return _Scalar(schema)
        if schema not in named:
            named[schema] = compile_schema(raw_named[schema], named, raw_named)
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
            node = compile_schema(f["type"], named, raw_named)
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
        return _Array(compile_schema(schema["items"], named, raw_named))
    if kind == "map":
        return _Map(compile_schema(schema["values"], named, raw_named))
    return compile_schema(kind, named, raw_named)


def _python_default(node: Node, default: Any) -> Any:
    """An Avro JSON field default as the python value fastavro would read."""
    if isinstance(node, _Union):
        node = node.branches[0]  # Avro: a union's default belongs to its first branch
    if isinstance(node, _Date) and isinstance(default, int):
        return _EPOCH.date() + timedelta(days=default)
    if isinstance(node, _Timestamp) and isinstance(default, int):
        return _EPOCH + timedelta(**{"milliseconds" if node.millis else "microseconds": default})
    return default
