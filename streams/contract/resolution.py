"""Avro schema resolution: what stops a reader schema from reading a writer's data.

The Avro specification's resolution rules, walked over two parsed schemas side by side
(`Resolver`): promotions, defaults, aliases, enum defaults, unions, recursive types. Every
finding is worded for the direction it is read in (a new schema reading old data, an old one
reading new data, or plain reader and writer), so `streams.contract.compat` can put the
compatibility modes on top. `can_read` is the bare question for two schemas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from fastavro.schema import SchemaParseException, UnknownType, parse_schema

from streams.exceptions import ConfigurationError

__all__ = ["Finding", "Incompatibility", "Parsed", "Resolver", "Schema", "can_read", "parse"]

Schema: TypeAlias = dict[str, Any] | list[Any] | str
Parsed: TypeAlias = tuple[Any, dict[str, Any]]  # a parsed schema and its named types
Finding: TypeAlias = tuple[str, str, str]  # (path, kind, change)

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


def can_read(
    reader: Schema, writer: Schema, *, named_types: Sequence[Schema] = ()
) -> list[Incompatibility]:
    """What stops `reader` from reading data written with `writer` (empty: nothing).

    `named_types` define types the schemas refer to by name but do not contain.
    """
    found = Resolver(parse(reader, named_types), parse(writer, named_types), None).run()
    return [Incompatibility(path=p, kind=k, message=m) for p, k, m in found]


def parse(schema: Schema, named_types: Sequence[Schema]) -> Parsed:
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


class Resolver:
    """Walks a reader and a writer schema side by side, collecting what cannot be resolved.

    `reader_is_new` says how to phrase a finding: True for BACKWARD (the writer is the
    previous schema), False for FORWARD, None for a neutral reader/writer wording.
    """

    def __init__(self, reader: Parsed, writer: Parsed, reader_is_new: bool | None) -> None:
        (self.reader, self.reader_named), (self.writer, self.writer_named) = reader, writer
        self.reader_is_new = reader_is_new
        self.in_progress: set[tuple[str, str]] = set()

    def run(self) -> list[Finding]:
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

    def resolve(self, reader: Any, writer: Any, path: str) -> list[Finding]:
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

    def _record(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[Finding]:
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
        found: list[Finding] = []
        for reader_field in reader["fields"]:
            name = reader_field["name"]
            writer_field = matched[name]
            if writer_field is not None:
                found += self.resolve(reader_field["type"], writer_field["type"], f"{path}.{name}")
            elif "default" not in reader_field:
                found.append(self._missing(reader_field, unmatched, path))
        self.in_progress.discard(pair)
        return found

    def _missing(self, reader_field: dict[str, Any], unmatched: list[Any], path: str) -> Finding:
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

    def _enum(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[Finding]:
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

    def _writer_union(self, reader: Any, branches: list[Any], path: str) -> list[Finding]:
        """Every branch the writer may have used must be readable."""
        found: list[Finding] = []
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

    def _reader_union(self, branches: list[Any], writer: Any, path: str) -> list[Finding]:
        """Some reader branch must read the writer's type."""
        if any(not self._probe(branch, writer) for branch in branches):
            return []
        counterpart = self._counterpart(branches, writer)
        if counterpart is not None:
            return self.resolve(counterpart, writer, path)
        return [self._mismatch(branches, writer, path)]

    def _probe(self, reader: Any, writer: Any) -> list[Finding]:
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

    def _mismatch(self, reader: Any, writer: Any, path: str) -> Finding:
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
