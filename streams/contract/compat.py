"""Schema evolution check: may a new Avro schema replace the published ones?

The Avro specification's schema resolution rules, applied to two schemas at once, and the
compatibility modes of Confluent Schema Registry on top. `BACKWARD` means readers of the
new schema can read data written with the previous one; `FORWARD` means readers of the
previous schema can read data written with the new one; `FULL` is both; the `_TRANSITIVE`
variants check every earlier version instead of only the latest.

Every broken rule is an `Incompatibility` with a JSON-path-like location (the root type's
name, then field names, `[]` for array items and `{}` for map values) and a message naming
the change, e.g. `PersoonVerhuisd.bsn: field removed without default (...)`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeAlias

from fastavro.schema import SchemaParseException, UnknownType, parse_schema

from streams.exceptions import ConfigurationError

__all__ = [
    "CompatibilityConfig",
    "Incompatibility",
    "Mode",
    "Schema",
    "can_read",
    "check",
    "check_history",
    "load_compatibility",
]

Schema: TypeAlias = dict[str, Any] | list[Any] | str

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})
# Writer type -> reader types that can read it (the spec's promotions).
_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}
_NEW_READS_OLD = "readers of the new schema cannot read old data"
_OLD_READS_NEW = "readers of the previous schema cannot read new data"
_NEITHER = "neither schema can read data written with the other"


class Mode(StrEnum):
    """A compatibility mode, named as in Confluent Schema Registry."""

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"

    @property
    def backward(self) -> bool:
        return self in (Mode.BACKWARD, Mode.BACKWARD_TRANSITIVE, Mode.FULL, Mode.FULL_TRANSITIVE)

    @property
    def forward(self) -> bool:
        return self in (Mode.FORWARD, Mode.FORWARD_TRANSITIVE, Mode.FULL, Mode.FULL_TRANSITIVE)

    @property
    def transitive(self) -> bool:
        return self.value.endswith("_TRANSITIVE")


@dataclass(frozen=True, slots=True, kw_only=True)
class Incompatibility:
    """One breaking change: where, a stable `kind`, and a plain-English `message`.

    `version` and `against` number schema versions from 1, oldest first (as the published
    `<n>.avsc` files); both are None for a bare `can_read`.
    """

    path: str
    kind: str
    message: str
    version: int | None = None
    against: int | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CompatibilityConfig:
    """The mode per event type, as `schemas/avro/compatibility.json` sets it."""

    default: Mode = Mode.BACKWARD
    types: Mapping[str, Mode] = field(default_factory=dict)

    def mode_for(self, event_type: str) -> Mode:
        return self.types.get(event_type, self.default)


def load_compatibility(path: str | Path) -> CompatibilityConfig:
    """Read `{"default": MODE, "types": {type: MODE}}`; raise ConfigurationError if wrong."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or set(raw) - {"default", "types"}:
            raise ValueError('expected an object with only "default" and "types"')
        types = raw.get("types", {})
        if not isinstance(types, dict):
            raise ValueError('"types" must be an object')
        return CompatibilityConfig(
            default=Mode(raw.get("default", Mode.BACKWARD)),
            types={str(name): Mode(mode) for name, mode in types.items()},
        )
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{path}: {exc}") from exc


def can_read(
    reader: Schema, writer: Schema, *, named_types: Sequence[Schema] = ()
) -> list[Incompatibility]:
    """What stops `reader` from reading data written with `writer` (empty: nothing).

    `named_types` define types the schemas refer to by name but do not contain.
    """
    found = _Resolver(_parse(reader, named_types), _parse(writer, named_types), None).run()
    return [Incompatibility(path=p, kind=k, message=m) for p, k, m in found]


def check(
    new: Schema,
    previous: Sequence[Schema],
    mode: Mode | str,
    *,
    named_types: Sequence[Schema] = (),
) -> list[Incompatibility]:
    """What stops `new` from following `previous` (oldest first) under `mode`."""
    mode = Mode(mode)
    if mode is Mode.NONE or not previous:
        return []
    version = len(previous) + 1
    first = 1 if mode.transitive else version - 1
    parsed_new = _parse(new, named_types)
    found: list[Incompatibility] = []
    for against in range(first, version):
        old = _parse(previous[against - 1], named_types)
        # Which directions break each change, so FULL reports a two-way break once.
        directions: dict[tuple[str, str, str], list[str]] = {}
        if mode.backward:
            for key in _Resolver(parsed_new, old, reader_is_new=True).run():
                directions.setdefault(key, []).append(_NEW_READS_OLD)
        if mode.forward:
            for key in _Resolver(old, parsed_new, reader_is_new=False).run():
                directions.setdefault(key, []).append(_OLD_READS_NEW)
        for (path, kind, change), why in directions.items():
            reason = why[0] if len(why) == 1 else _NEITHER
            found.append(
                Incompatibility(
                    path=path,
                    kind=kind,
                    message=f"{change} ({reason})",
                    version=version,
                    against=against,
                )
            )
    return found


def check_history(
    versions: Sequence[Schema], mode: Mode | str, *, named_types: Sequence[Schema] = ()
) -> list[Incompatibility]:
    """Check every version (oldest first) against its predecessors as `mode` says."""
    return [
        problem
        for n in range(1, len(versions))
        for problem in check(versions[n], versions[:n], mode, named_types=named_types)
    ]


_Parsed: TypeAlias = tuple[Any, dict[str, Any]]
_Finding: TypeAlias = tuple[str, str, str]  # (path, kind, change)


def _parse(schema: Schema, named_types: Sequence[Schema]) -> _Parsed:
    """Full names everywhere, plus a table of the named types by full name."""
    named: dict[str, Any] = {}
    try:
        for named_type in named_types:
            parse_schema(named_type, named_schemas=named, _write_hint=False)
        return parse_schema(schema, named_schemas=named, _write_hint=False), named
    except (SchemaParseException, UnknownType) as exc:
        raise ConfigurationError(f"not a valid Avro schema: {exc}") from exc


def _short(full_name: str) -> str:
    return full_name.rpartition(".")[2]


class _Resolver:
    """Walks a reader and a writer schema side by side, collecting what cannot be resolved.

    `reader_is_new` says how to phrase a finding: True for BACKWARD (the writer is the
    previous schema), False for FORWARD, None for a neutral reader/writer wording.
    """

    def __init__(self, reader: _Parsed, writer: _Parsed, reader_is_new: bool | None) -> None:
        (self.reader, self.reader_named), (self.writer, self.writer_named) = reader, writer
        self.reader_is_new = reader_is_new
        self.in_progress: set[tuple[str, str]] = set()

    def run(self) -> list[_Finding]:
        # Paths start at the new schema's root name, so both directions of FULL agree.
        new, named = (
            (self.writer, self.writer_named)
            if self.reader_is_new is False
            else (self.reader, self.reader_named)
        )
        root = self._deref(new, named)
        name = root.get("name") if isinstance(root, dict) else None
        found = self.resolve(self.reader, self.writer, _short(name or "$"))
        return list(dict.fromkeys(found))  # a union may report the same break per branch

    def say(self, backward: str, forward: str, neutral: str) -> str:
        """Pick the wording for the direction this resolver reads in."""
        if self.reader_is_new is None:
            return neutral
        return backward if self.reader_is_new else forward

    def changed(self, what: str, reader: str, writer: str) -> str:
        return self.say(
            f"{what} changed from {writer} to {reader}",
            f"{what} changed from {reader} to {writer}",
            f"writer {what} {writer} cannot be read as {reader}",
        )

    def resolve(self, reader: Any, writer: Any, path: str) -> list[_Finding]:
        reader = self._deref(reader, self.reader_named)
        writer = self._deref(writer, self.writer_named)
        if isinstance(writer, list):
            return self._writer_union(reader, writer, path)
        if isinstance(reader, list):
            return self._reader_union(reader, writer, path)
        kind, writer_kind = _kind(reader), _kind(writer)
        if kind in _PRIMITIVES and (
            kind == writer_kind or kind in _PROMOTIONS.get(writer_kind, ())
        ):
            return []
        if kind != writer_kind:
            return [self._mismatch(reader, writer, path)]
        if kind == "array":
            return self.resolve(reader["items"], writer["items"], f"{path}[]")
        if kind == "map":
            return self.resolve(reader["values"], writer["values"], f"{path}{{}}")
        if not self._same_name(reader, writer):
            change = self.changed(f"{kind} name", reader["name"], writer["name"])
            return [(path, "name-mismatch", f"{change} without alias")]
        if kind == "enum":
            return self._enum(reader, writer, path)
        if kind == "fixed" and reader["size"] != writer["size"]:
            change = self.changed(
                f"size of fixed {_short(reader['name'])}", reader["size"], writer["size"]
            )
            return [(path, "size-mismatch", change)]
        if kind in ("record", "error"):
            return self._record(reader, writer, path)
        return []

    def _record(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[_Finding]:
        pair = (reader["name"], writer["name"])
        if pair in self.in_progress:
            return []  # a recursive type: the pair is being resolved further up
        self.in_progress.add(pair)
        writer_fields = {f["name"]: f for f in writer["fields"]}
        matched = {
            f["name"]: next(
                (
                    writer_fields[n]
                    for n in [f["name"], *f.get("aliases", ())]
                    if n in writer_fields
                ),
                None,
            )
            for f in reader["fields"]
        }
        unmatched = [f for f in writer["fields"] if all(m is not f for m in matched.values())]
        found: list[_Finding] = []
        for reader_field in reader["fields"]:
            name = reader_field["name"]
            writer_field = matched[name]
            if writer_field is not None:
                found += self.resolve(reader_field["type"], writer_field["type"], f"{path}.{name}")
            elif "default" not in reader_field:
                found.append(self._missing(reader_field, unmatched, path))
        self.in_progress.discard(pair)
        return found

    def _missing(self, reader_field: dict[str, Any], unmatched: list[Any], path: str) -> _Finding:
        """A reader field without default that the writer lacks: removed, added or renamed."""
        name = reader_field["name"]
        # A writer field nobody reads, of a type that fits, was most likely this one renamed.
        fits = [f for f in unmatched if not self._probe(reader_field["type"], f["type"])]
        if len(fits) == 1:
            old, new = fits[0]["name"], name
            if self.reader_is_new is None:
                change = f"writer field '{old}' does not match reader field '{new}' (no alias)"
            elif self.reader_is_new:
                change = f"field '{old}' renamed to '{new}' without alias"
            elif name in fits[0].get("aliases", ()):
                change = f"field '{new}' renamed to '{old}', an alias only new readers know"
            else:
                change = f"field '{new}' renamed to '{old}' without alias"
            return (path, "renamed", change)
        change = self.say(
            "field added without default",
            "field removed without default",
            "field missing from the writer has no default in the reader",
        )
        return (f"{path}.{name}", "missing-default", change)

    def _enum(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[_Finding]:
        if "default" in reader:
            return []  # unknown writer symbols read as the reader's default
        enum, known = _short(reader["name"]), set(reader["symbols"])
        return [
            (
                path,
                "symbol-unknown",
                self.say(
                    f"symbol {symbol} removed from {enum}",
                    f"symbol {symbol} added to {enum} without an enum default",
                    f"writer symbol {symbol} is unknown to {enum}, which has no enum default",
                ),
            )
            for symbol in writer["symbols"]
            if symbol not in known
        ]

    def _writer_union(self, reader: Any, branches: list[Any], path: str) -> list[_Finding]:
        """Every branch the writer may have used must be readable."""
        found: list[_Finding] = []
        for branch in branches:
            errors = self.resolve(reader, branch, path)
            if not errors:
                continue
            if self._counterpart(reader, branch) is not None:
                found += errors  # the same type on both sides: report what changed inside it
            elif isinstance(reader, list):
                what = f"union branch {self._describe(branch, self.writer_named)}"
                change = self.say(f"{what} removed", f"{what} added", f"writer {what} unreadable")
                found.append((path, "union-branch", change))
            else:
                found.append(self._mismatch(reader, branches, path))
        return found

    def _reader_union(self, branches: list[Any], writer: Any, path: str) -> list[_Finding]:
        """Some reader branch must read the writer's type."""
        if any(not self._probe(branch, writer) for branch in branches):
            return []
        counterpart = self._counterpart(branches, writer)
        if counterpart is not None:
            return self.resolve(counterpart, writer, path)
        return [self._mismatch(branches, writer, path)]

    def _probe(self, reader: Any, writer: Any) -> list[_Finding]:
        """Resolve without leaving recursion marks behind (a trial, not a verdict)."""
        saved = set(self.in_progress)
        try:
            return self.resolve(reader, writer, "")
        finally:
            self.in_progress = saved

    def _counterpart(self, reader: Any, writer: Any) -> Any:
        """The reader type (or union branch) that is the writer's type, if any."""
        writer = self._deref(writer, self.writer_named)
        for candidate in reader if isinstance(reader, list) else [reader]:
            candidate = self._deref(candidate, self.reader_named)
            if isinstance(candidate, list) or _kind(candidate) != _kind(writer):
                continue
            if _kind(writer) not in _NAMED or self._same_name(candidate, writer):
                return candidate
        return None

    def _same_name(self, reader: dict[str, Any], writer: dict[str, Any]) -> bool:
        namespace = reader["name"].rpartition(".")[0]
        aliases = {
            a if "." in a or not namespace else f"{namespace}.{a}"
            for a in reader.get("aliases", ())
        }
        return bool(reader["name"] == writer["name"] or writer["name"] in aliases)

    def _mismatch(self, reader: Any, writer: Any, path: str) -> _Finding:
        described = (
            self._describe(reader, self.reader_named),
            self._describe(writer, self.writer_named),
        )
        return (path, "type-changed", self.changed("type", *described))

    def _describe(self, schema: Any, named: dict[str, Any]) -> str:
        schema = self._deref(schema, named)
        if isinstance(schema, list):
            return f"[{', '.join(self._describe(b, named) for b in schema)}]"
        kind = _kind(schema)
        if kind == "array":
            return f"array<{self._describe(schema['items'], named)}>"
        if kind == "map":
            return f"map<{self._describe(schema['values'], named)}>"
        return _short(schema["name"]) if kind in _NAMED else kind

    @staticmethod
    def _deref(schema: Any, named: dict[str, Any]) -> Any:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            return named[schema]
        return schema


def _kind(schema: Any) -> str:
    """The type a schema resolves as; a logical type resolves as its underlying type."""
    if isinstance(schema, str):
        return schema
    kind = schema["type"]
    return kind if isinstance(kind, str) else _kind(kind)
