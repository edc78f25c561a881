"""Schema evolution check: verdicts per mode, and messages that name the breaking change."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.compatibility
import avro.schema
import pytest

from streams.contract.compat import (
    CompatibilityConfig,
    Mode,
    check,
    check_history,
    load_compatibility,
)
from streams.exceptions import ConfigurationError

ROOT = Path(__file__).resolve().parents[3]
OK = None  # a verdict: no incompatibility in this direction


def record(*fields: dict[str, Any], name: str = "PersoonVerhuisd", **extra: Any) -> dict[str, Any]:
    return {
        "type": "record",
        "name": name,
        "namespace": "nl.gemeentebus.brp",
        "fields": list(fields),
        **extra,
    }


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def verhuissoort(*symbols: str, **extra: Any) -> dict[str, Any]:
    return {"type": "enum", "name": "Verhuissoort", "symbols": list(symbols), **extra}


def adres(*fields: dict[str, Any]) -> dict[str, Any]:
    return record(*fields, name="Adres", namespace="nl.gemeentebus.common")


BSN = field("bsn", "string")
TOELICHTING = field("toelichting", ["null", "string"], default=None)
SOORTEN = ("BINNENGEMEENTELIJK", "INTERGEMEENTELIJK", "EMIGRATIE", "IMMIGRATIE")


@dataclass(frozen=True)
class Case:
    """An evolution old -> new; `backward`/`forward` hold the expected message (or OK)."""

    id: str
    old: dict[str, Any]
    new: dict[str, Any]
    backward: str | None
    forward: str | None


CASES = [
    Case(
        "optional field with default added",
        record(BSN),
        record(BSN, TOELICHTING),
        OK,
        OK,
    ),
    Case(
        "field without default added",
        record(BSN),
        record(BSN, field("gemeentecode", "string")),
        "PersoonVerhuisd.gemeentecode: field added without default "
        "(readers of the new schema cannot read old data)",
        OK,
    ),
    Case(
        "field without default removed",
        record(BSN, field("gemeentecode", "string")),
        record(BSN),
        OK,
        "PersoonVerhuisd.gemeentecode: field removed without default "
        "(readers of the previous schema cannot read new data)",
    ),
    Case("field with default removed", record(BSN, TOELICHTING), record(BSN), OK, OK),
    Case(
        "rename without alias",
        record(BSN, field("postcode", "string")),
        record(BSN, field("pc", "string")),
        "PersoonVerhuisd: field 'postcode' renamed to 'pc' without alias",
        "PersoonVerhuisd: field 'postcode' renamed to 'pc' without alias",
    ),
    Case(
        # The old schema has no alias, so its readers still cannot find the field.
        "rename with alias",
        record(BSN, field("postcode", "string")),
        record(BSN, field("pc", "string", aliases=["postcode"])),
        OK,
        "PersoonVerhuisd: field 'postcode' renamed to 'pc', an alias only new readers know",
    ),
    Case(
        "type change string to int",
        record(field("land", "string")),
        record(field("land", "int")),
        "PersoonVerhuisd.land: type changed from string to int",
        "PersoonVerhuisd.land: type changed from string to int",
    ),
    Case(
        "type promotion int to long",
        record(field("huisnummer", "int")),
        record(field("huisnummer", "long")),
        OK,
        "PersoonVerhuisd.huisnummer: type changed from int to long "
        "(readers of the previous schema cannot read new data)",
    ),
    Case(
        "string and bytes read each other",
        record(field("bsn", "string")),
        record(field("bsn", "bytes")),
        OK,
        OK,
    ),
    Case(
        "logical type follows its underlying type",
        record(field("datum", {"type": "int", "logicalType": "date"})),
        record(field("datum", "int")),
        OK,
        OK,
    ),
    Case(
        "enum symbol added without enum default",
        record(field("soort", verhuissoort(*SOORTEN))),
        record(field("soort", verhuissoort(*SOORTEN, "ONBEKEND"))),
        OK,
        "PersoonVerhuisd.soort: symbol ONBEKEND added to Verhuissoort without an enum default",
    ),
    Case(
        "enum symbol added with enum default",
        record(field("soort", verhuissoort(*SOORTEN, "ONBEKEND", default="ONBEKEND"))),
        record(
            field("soort", verhuissoort(*SOORTEN, "ONBEKEND", "AMBTSHALVE", default="ONBEKEND"))
        ),
        OK,
        OK,
    ),
    Case(
        "enum symbol removed",
        record(field("soort", verhuissoort(*SOORTEN))),
        record(field("soort", verhuissoort(*SOORTEN[:3]))),
        "PersoonVerhuisd.soort: symbol IMMIGRATIE removed from Verhuissoort",
        OK,
    ),
    Case(
        "union widened",
        record(field("huisnummer", ["null", "string"])),
        record(field("huisnummer", ["null", "string", "int"])),
        OK,
        "PersoonVerhuisd.huisnummer: union branch int added",
    ),
    Case(
        "union narrowed",
        record(field("huisnummer", ["null", "string", "int"])),
        record(field("huisnummer", ["null", "string"])),
        "PersoonVerhuisd.huisnummer: union branch int removed",
        OK,
    ),
    Case(
        "field made optional",
        record(field("straat", "string")),
        record(field("straat", ["null", "string"])),
        OK,
        "PersoonVerhuisd.straat: type changed from string to [null, string]",
    ),
    Case(
        "nested record field changed",
        record(field("nieuwAdres", adres(field("huisnummer", "int")))),
        record(field("nieuwAdres", adres(field("huisnummer", "string")))),
        "PersoonVerhuisd.nieuwAdres.huisnummer: type changed from int to string",
        "PersoonVerhuisd.nieuwAdres.huisnummer: type changed from int to string",
    ),
    Case(
        "nested record in a union, field added",
        record(field("vorigAdres", ["null", adres(BSN)], default=None)),
        record(
            field("vorigAdres", ["null", adres(BSN, field("postcode", "string"))], default=None)
        ),
        "PersoonVerhuisd.vorigAdres.postcode: field added without default",
        OK,
    ),
    Case(
        "array items changed",
        record(field("adresregels", {"type": "array", "items": "string"})),
        record(field("adresregels", {"type": "array", "items": "int"})),
        "PersoonVerhuisd.adresregels[]: type changed from string to int",
        "PersoonVerhuisd.adresregels[]: type changed from string to int",
    ),
    Case(
        "map values promoted",
        record(field("kenmerken", {"type": "map", "values": "float"})),
        record(field("kenmerken", {"type": "map", "values": "double"})),
        OK,
        "PersoonVerhuisd.kenmerken{}: type changed from float to double",
    ),
    Case(
        "record renamed without alias",
        record(BSN, name="PersoonVerhuisd"),
        record(BSN, name="PersoonVerhuizing"),
        "PersoonVerhuizing: record name changed from nl.gemeentebus.brp.PersoonVerhuisd "
        "to nl.gemeentebus.brp.PersoonVerhuizing without alias",
        "record name changed from nl.gemeentebus.brp.PersoonVerhuisd "
        "to nl.gemeentebus.brp.PersoonVerhuizing without alias",
    ),
    Case(
        "record renamed with alias",
        record(BSN, name="PersoonVerhuisd"),
        record(BSN, name="PersoonVerhuizing", aliases=["nl.gemeentebus.brp.PersoonVerhuisd"]),
        OK,
        "record name changed",
    ),
    Case(
        "fixed size changed",
        record(field("hash", {"type": "fixed", "name": "Hash", "size": 16})),
        record(field("hash", {"type": "fixed", "name": "Hash", "size": 32})),
        "PersoonVerhuisd.hash: size of fixed Hash changed from 16 to 32",
        "PersoonVerhuisd.hash: size of fixed Hash changed from 16 to 32",
    ),
]


def messages(problems: list[Any]) -> str:
    return "\n".join(str(p) for p in problems)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_backward_and_forward_verdicts_name_the_change(case: Case) -> None:
    for mode, expected in ((Mode.BACKWARD, case.backward), (Mode.FORWARD, case.forward)):
        found = messages(check(case.new, [case.old], mode))
        if expected is OK:
            assert found == "", f"{mode}: {found}"
        else:
            assert expected in found, f"{mode}: {found}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_full_is_both_directions(case: Case) -> None:
    found = check(case.new, [case.old], Mode.FULL)
    assert (found == []) == (case.backward is OK and case.forward is OK)
    assert check(case.new, [case.old], Mode.NONE) == []


def test_an_alias_without_namespace_is_in_the_namespace_of_its_type() -> None:
    renamed = record(BSN, name="PersoonVerhuizing", aliases=["PersoonVerhuisd"])
    assert check(renamed, [record(BSN)], Mode.BACKWARD) == []
    elsewhere = record(BSN, name="PersoonVerhuisd", namespace="nl.gemeentebus.bag")
    assert "record name changed" in messages(check(renamed, [elsewhere], Mode.BACKWARD))


def test_a_two_way_break_is_reported_once_under_full() -> None:
    old, new = record(field("land", "string")), record(field("land", "int"))
    assert messages(check(new, [old], "FULL")) == (
        "PersoonVerhuisd.land: type changed from string to int "
        "(neither schema can read data written with the other)"
    )


# v3 can read v2 (gemeentecode has a default) but not v1 (gemeentecode was a string).
V1 = record(BSN, field("gemeentecode", "string"))
V2 = record(BSN)
V3 = record(BSN, field("gemeentecode", "int", default=0))


def test_transitive_modes_check_every_earlier_version() -> None:
    assert check(V3, [V1, V2], Mode.BACKWARD) == []
    [problem] = check(V3, [V1, V2], Mode.BACKWARD_TRANSITIVE)
    assert (problem.version, problem.against, problem.kind) == (3, 1, "type-changed")
    assert str(problem) == (
        "PersoonVerhuisd.gemeentecode: type changed from string to int "
        "(readers of the new schema cannot read old data)"
    )


def test_check_history_checks_each_version_against_its_predecessors() -> None:
    assert check_history([V1, V2, V3], Mode.BACKWARD) == []
    assert [(p.version, p.against) for p in check_history([V1, V2, V3], "FULL_TRANSITIVE")] == [
        (2, 1),  # v1 readers need gemeentecode, v2 dropped it without default
        (3, 1),
    ]


def test_recursive_types_terminate_and_report_nested_changes() -> None:
    def lijst(waarde: str) -> dict[str, Any]:
        volgende = field("volgende", ["null", "Schakel"], default=None)
        return record(field("waarde", waarde), volgende, name="Schakel")

    assert check(lijst("int"), [lijst("int")], Mode.FULL) == []
    assert messages(check(lijst("string"), [lijst("int")], Mode.BACKWARD)) == (
        "Schakel.waarde: type changed from int to string "
        "(readers of the new schema cannot read old data)"
    )


def test_the_published_schemas_resolve_named_types_from_elsewhere() -> None:
    events, types = ROOT / "schemas/avro/events", ROOT / "schemas/avro/types"
    verhuisd = json.loads((events / "nl.brp.persoon-verhuisd.avsc").read_text())
    adres_type = json.loads((types / "nl.gemeentebus.common.Adres.avsc").read_text())
    assert check(verhuisd, [verhuisd], Mode.FULL_TRANSITIVE, named_types=[adres_type]) == []
    with pytest.raises(ConfigurationError, match="not a valid Avro schema"):
        check(verhuisd, [verhuisd], Mode.FULL)  # Adres unknown without named_types


def test_compatibility_config_loads_and_rejects_unknown_modes(tmp_path: Path) -> None:
    config = load_compatibility(ROOT / "schemas/avro/compatibility.json")
    assert config == CompatibilityConfig(default=Mode.BACKWARD, types={})
    assert config.mode_for("nl.brp.persoon-verhuisd") is Mode.BACKWARD
    custom = tmp_path / "compatibility.json"
    custom.write_text('{"default": "FULL", "types": {"nl.brp.persoon-overleden": "NONE"}}')
    assert load_compatibility(custom).mode_for("nl.brp.persoon-overleden") is Mode.NONE
    assert load_compatibility(custom).mode_for("nl.brp.persoon-verhuisd") is Mode.FULL
    custom.write_text('{"default": "SIDEWAYS"}')
    with pytest.raises(ConfigurationError, match="SIDEWAYS"):
        load_compatibility(custom)


def avro_says_compatible(reader: dict[str, Any], writer: dict[str, Any]) -> bool:
    checker = avro.compatibility.ReaderWriterCompatibilityChecker()
    result = checker.get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    )
    return result.compatibility is avro.compatibility.SchemaCompatibilityType.compatible


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_verdicts_agree_with_apache_avro(case: Case) -> None:
    assert avro_says_compatible(case.new, case.old) == (case.backward is OK)
    assert avro_says_compatible(case.old, case.new) == (case.forward is OK)
