"""The CloudEvent context attributes as every binding reads and writes them (SPEC §2).

Which attributes exist and how they are checked: `read_context` on the way in (from the
headers of a Kafka record or an HTTP request, or from a structured-mode JSON object, each
naming them its own way: `Place`), `outgoing_errors` on the way out. `header_attributes` is
the one reading of `ce_*` / `ce-*` headers, and `raise_for` picks the `InvalidEvent` a list
of errors makes. The bindings themselves are `streams.contract.codec`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streams.contract.avrodata import DataBinding, data_binding, parse_time
from streams.contract.envelope import SPECVERSION, CloudEvent
from streams.contract.schemas import SchemaRegistry
from streams.exceptions import FieldError, InvalidEvent, UndecodableEvent, UnknownSchema

__all__ = [
    "Place",
    "header_attributes",
    "media_type",
    "outgoing_errors",
    "raise_for",
    "read_context",
]

_REQUIRED = ("specversion", "id", "source", "type", "time", "dataschema")
_OPTIONAL = ("subject", "sequence")
_RESERVED = frozenset({*_REQUIRED, *_OPTIONAL, "data", "data_base64", "datacontenttype"})
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
# Errors of the bytes or envelope rather than of the data: these make an UndecodableEvent.
_DATA_CODES_UNDECODABLE = frozenset({"avro_decode", "avro_trailing_bytes"})


def raise_for(errors: list[FieldError]) -> None:
    """Raise the most specific InvalidEvent for these errors (none: nothing to raise)."""
    if not errors:
        return
    codes = {e.code for e in errors}
    if codes == {"unknown_dataschema"}:
        raise UnknownSchema(errors)
    data_codes = {c for c in codes if c.startswith("avro_")} - _DATA_CODES_UNDECODABLE
    raise (InvalidEvent if data_codes else UndecodableEvent)(errors)


@dataclass(frozen=True, slots=True)
class Place:
    """How one binding names an attribute in its errors (`ce_id`, `ce-id`, `[3].id`)."""

    prefix: str
    missing: str

    def path(self, attribute: str) -> str:
        return self.prefix + attribute


def read_context(
    attrs: Mapping[str, Any],
    place: Place,
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


def header_attributes(
    headers: Iterable[tuple[str, Any]],
    prefix: str,
    decode: Callable[[Any], str | None],
    undecodable: str,
    errors: list[FieldError],
    *,
    also: Iterable[str] = (),
) -> tuple[dict[str, str], frozenset[str]]:
    """The context attributes a binding carries in headers (`ce_id`, `ce-id`), by attribute name,
    and the names of the broken ones; every repeated or undecodable header is put in `errors`.

    `also`: other header names (lower-case, matched in any case) read the same way, under
    their own name. Any other header (tracing, ...) is not ours to judge and is skipped.
    """
    extra = frozenset(also)
    attrs: dict[str, str] = {}
    broken: set[str] = set()
    for name, raw in headers:
        if name.startswith(prefix):
            attr = name[len(prefix) :]
        elif name.lower() in extra:
            attr = name.lower()
        else:
            continue
        if attr in attrs or attr in broken:
            errors.append(FieldError(name, "duplicate_header", "header appears more than once"))
            attrs.pop(attr, None)
            broken.add(attr)
            continue
        text = decode(raw)
        if text is None:
            errors.append(FieldError(name, "header_encoding", undecodable))
            broken.add(attr)
        else:
            attrs[attr] = text
    return attrs, frozenset(broken)


def outgoing_errors(event: CloudEvent) -> list[FieldError]:
    """What is wrong with the context attributes of an event about to be written."""
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


def media_type(value: str | None) -> str:
    """The media type of a content-type value, lower-case, without its parameters."""
    return (value or "").split(";", 1)[0].strip().lower()
