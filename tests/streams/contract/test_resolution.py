"""Avro schema resolution: what stops a reader schema from reading a writer's data."""

from __future__ import annotations

from typing import Any

import pytest

from streams.contract.resolution import Incompatibility, can_read
from streams.exceptions import ConfigurationError


def record(*fields: dict[str, Any], name: str = "PersoonVerhuisd") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "nl.gemeentebus.brp", "fields": [*fields]}


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def verhuissoort(*symbols: str) -> dict[str, Any]:
    return {"type": "enum", "name": "Verhuissoort", "symbols": list(symbols)}


def messages(problems: list[Incompatibility]) -> str:
    return "\n".join(str(p) for p in problems)


BSN = field("bsn", "string")


def test_can_read_words_findings_as_reader_and_writer() -> None:
    reader = record(BSN, field("soort", verhuissoort("EMIGRATIE")))
    writer = record(field("soort", verhuissoort("EMIGRATIE", "IMMIGRATIE")))
    assert messages(can_read(reader, writer)) == (
        "PersoonVerhuisd.bsn: field missing from the writer has no default in the reader\n"
        "PersoonVerhuisd.soort: writer symbol IMMIGRATIE is unknown to Verhuissoort, "
        "which has no enum default"
    )
    assert can_read(writer, writer) == []


def test_the_spec_promotions_read_and_nothing_narrows() -> None:
    assert can_read(record(field("n", "long")), record(field("n", "int"))) == []
    assert can_read(record(field("n", "bytes")), record(field("n", "string"))) == []
    [problem] = can_read(record(field("n", "int")), record(field("n", "long")))
    assert (problem.path, problem.kind, problem.version) == (
        "PersoonVerhuisd.n",
        "type-changed",
        None,
    )


def test_a_recursive_type_resolves_against_itself() -> None:
    schakel = record(
        field("waarde", "int"),
        field("volgende", ["null", "Schakel"], default=None),
        name="Schakel",
    )
    assert can_read(schakel, schakel) == []


def test_a_schema_that_is_no_avro_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="not a valid Avro schema"):
        can_read(record(field("adres", "Adres")), record(BSN))
