"""Schema evolution check: may a new Avro schema replace the published ones?

The compatibility modes of Confluent Schema Registry, on top of the Avro specification's
schema resolution rules (`streams.contract.resolution`). `BACKWARD` means readers of the
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

from streams.contract.resolution import Incompatibility, Resolver, Schema, parse
from streams.exceptions import ConfigurationError

__all__ = ["CompatibilityConfig", "Mode", "check", "check_history", "load_compatibility"]

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
    parsed_new = parse(new, named_types)
    found: list[Incompatibility] = []
    for against in range(first, version):
        old = parse(previous[against - 1], named_types)
        # Which directions break each change, so FULL reports a two-way break once.
        directions: dict[tuple[str, str, str], list[str]] = {}
        if mode.backward:
            for key in Resolver(parsed_new, old, reader_is_new=True).run():
                directions.setdefault(key, []).append(_NEW_READS_OLD)
        if mode.forward:
            for key in Resolver(old, parsed_new, reader_is_new=False).run():
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
