"""The schema registry: every published Avro writer schema of every event type.

A published version is a frozen, self-contained `.avsc` file (shared named types expanded
inline) at `schemas/avro/published/<type>/<version>.avsc`, named on the wire by the
`dataschema` URN `urn:gemeentebus:schema:<type>:<version>` (SPEC §1). The sources in
`schemas/avro/events/` and `schemas/avro/types/` are what people edit; `publish` turns a
changed source into the next version and records its sha256 in `published/SHA256SUMS`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastavro import parse_schema

from streams.exceptions import FieldError, UnknownSchema

__all__ = [
    "DATASCHEMA_PREFIX",
    "DEFAULT_ROOT",
    "SchemaRegistry",
    "SchemaVersion",
    "dataschema_urn",
    "parse_dataschema",
    "publish",
    "registry",
]

DATASCHEMA_PREFIX = "urn:gemeentebus:schema:"
# `avro/` beside this module: in a checkout a link to schemas/avro/, in a wheel a copy of it.
DEFAULT_ROOT = (Path(__file__).resolve().parent / "avro").resolve()
SUMS_FILE = "SHA256SUMS"

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_URN = re.compile(r"^urn:gemeentebus:schema:([A-Za-z0-9._-]+):([1-9][0-9]{0,8})$")


def dataschema_urn(type_: str, version: int) -> str:
    """The `dataschema` URN naming one published version of an event type."""
    return f"{DATASCHEMA_PREFIX}{type_}:{version}"


def parse_dataschema(urn: str) -> tuple[str, int]:
    """Split a `dataschema` URN into (type, version); `UnknownSchema` if it is not one."""
    match = _URN.match(urn)
    if match is None:
        raise UnknownSchema([_unknown("not a urn:gemeentebus:schema:<type>:<version> URN")])
    return match.group(1), int(match.group(2))


@dataclass(frozen=True, eq=False, slots=True)
class SchemaVersion:
    """One published writer schema: `schema` is parsed by fastavro, `raw` is the file's JSON."""

    type: str
    version: int
    dataschema: str
    schema: Any = field(repr=False)
    raw: Mapping[str, Any] = field(repr=False)


class SchemaRegistry:
    """The published schemas (and the sources) under one `schemas/avro` directory."""

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)
        self._versions: dict[str, tuple[SchemaVersion, ...]] = {}
        self._by_urn: dict[str, SchemaVersion] = {}
        published = self.root / "published"
        if published.is_dir():
            for folder in sorted(p for p in published.iterdir() if p.is_dir()):
                self._add(self._load(folder))

    def _add(self, versions: tuple[SchemaVersion, ...]) -> None:
        if not versions:
            return
        self._versions[versions[0].type] = versions
        self._by_urn.update((v.dataschema, v) for v in versions)

    def _load(self, folder: Path) -> tuple[SchemaVersion, ...]:
        numbers = sorted(int(p.stem) for p in folder.glob("*.avsc") if p.stem.isdigit())
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"published versions of {folder.name} are not 1..n: {numbers}")
        versions = []
        for number in numbers:
            raw = json.loads((folder / f"{number}.avsc").read_text(encoding="utf-8"))
            # A fresh name table per file: two versions define the same record names.
            parsed = parse_schema(raw, named_schemas={})
            urn = dataschema_urn(folder.name, number)
            versions.append(SchemaVersion(folder.name, number, urn, parsed, raw))
        return tuple(versions)

    def types(self) -> tuple[str, ...]:
        """The event types that have at least one published version."""
        return tuple(self._versions)

    def versions(self, type_: str) -> tuple[SchemaVersion, ...]:
        """Every published version of a type, oldest first."""
        try:
            return self._versions[type_]
        except KeyError:
            raise UnknownSchema(
                [FieldError("type", "unknown_type", "no published schema for this event type")]
            ) from None

    def current(self, type_: str) -> SchemaVersion:
        """The latest published version of a type: what the bus writes and reads into."""
        return self.versions(type_)[-1]

    def by_dataschema(self, urn: str) -> SchemaVersion:
        """The version a `dataschema` URN names; `UnknownSchema` if there is none."""
        known = self._by_urn.get(urn)
        if known is not None:
            return known
        type_, version = parse_dataschema(urn)
        versions = self._versions.get(type_, ())
        if not 1 <= version <= len(versions):
            raise UnknownSchema([_unknown("no published schema with this dataschema")])
        return versions[version - 1]

    def source_types(self) -> tuple[str, ...]:
        """The event types that have a source schema in `events/`."""
        return tuple(sorted(p.stem for p in (self.root / "events").glob("*.avsc")))

    def expanded_source(self, type_: str) -> dict[str, Any]:
        """The source schema of a type with every shared named type expanded inline."""
        shared = {}
        for path in sorted((self.root / "types").glob("*.avsc")):
            schema = json.loads(path.read_text(encoding="utf-8"))
            shared[_fullname(schema["name"], schema.get("namespace", ""))] = schema
        source = json.loads((self.root / "events" / f"{type_}.avsc").read_text(encoding="utf-8"))
        expanded: dict[str, Any] = _expand(source, "", shared, set())
        return expanded

    def changed_published_files(self) -> list[str]:
        """Published files whose sha256 differs from `SHA256SUMS`, or that are unlisted/missing."""
        listed = self._read_sums()
        actual = {
            path.relative_to(self.root / "published").as_posix(): _sha256(path)
            for path in (self.root / "published").glob("*/*.avsc")
        }
        return sorted(
            name for name in listed.keys() | actual.keys() if listed.get(name) != actual.get(name)
        )

    def publish(self, type_: str) -> SchemaVersion | None:
        """Write the expanded source as the next version if it differs from the latest one.

        Returns the new version, or None when the latest published version is current.
        """
        expanded = self.expanded_source(type_)
        existing = self._versions.get(type_, ())
        if existing and dict(existing[-1].raw) == expanded:
            return None
        parse_schema(copy.deepcopy(expanded), named_schemas={})  # refuse an invalid schema
        folder = self.root / "published" / type_
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{len(existing) + 1}.avsc"
        path.write_text(json.dumps(expanded, indent=2, ensure_ascii=False) + "\n", "utf-8")
        sums = self._read_sums()
        sums[path.relative_to(self.root / "published").as_posix()] = _sha256(path)
        lines = "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))
        (self.root / "published" / SUMS_FILE).write_text(lines, encoding="utf-8")
        self._add(self._load(folder))
        return self._versions[type_][-1]

    def _read_sums(self) -> dict[str, str]:
        path = self.root / "published" / SUMS_FILE
        if not path.exists():
            return {}
        pairs = (line.split(maxsplit=1) for line in path.read_text("utf-8").splitlines() if line)
        return {name.strip(): digest for digest, name in pairs}


@functools.cache
def registry() -> SchemaRegistry:
    """The registry of this installation, read once on first use."""
    return SchemaRegistry(DEFAULT_ROOT)


def publish(type_: str, *, root: Path = DEFAULT_ROOT) -> SchemaVersion | None:
    """Publish the next version of a type if its source changed (`gemeentebus schemas publish`)."""
    published = SchemaRegistry(root).publish(type_)
    if published is not None and root == DEFAULT_ROOT:
        registry.cache_clear()
    return published


def _expand(node: Any, namespace: str, shared: Mapping[str, Any], defined: set[str]) -> Any:
    """Inline the first use of every shared named type; later uses stay references by name."""
    if isinstance(node, list):
        return [_expand(branch, namespace, shared, defined) for branch in node]
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        name = _fullname(node, namespace)
        if name in defined:
            return node
        if name not in shared:
            raise ValueError(f"unknown named type {node!r}")
        definition = copy.deepcopy(shared[name])
        return _expand(definition, "", shared, defined)
    if not isinstance(node, dict):
        return node
    node = dict(node)
    kind = node.get("type")
    if kind in ("record", "error", "enum", "fixed"):
        fullname = _fullname(node["name"], node.get("namespace", namespace))
        defined.add(fullname)
        namespace = fullname.rpartition(".")[0]
        if kind in ("record", "error"):
            node["fields"] = [
                {**f, "type": _expand(f["type"], namespace, shared, defined)}
                for f in node["fields"]
            ]
    elif kind == "array":
        node["items"] = _expand(node["items"], namespace, shared, defined)
    elif kind == "map":
        node["values"] = _expand(node["values"], namespace, shared, defined)
    else:
        node["type"] = _expand(kind, namespace, shared, defined)
    return node


def _fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _unknown(message: str) -> FieldError:
    return FieldError("dataschema", "unknown_dataschema", message)
