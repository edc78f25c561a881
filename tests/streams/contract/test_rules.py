"""The semantic layer: every rule has its code, every broken rule is reported, no values leak."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest

from streams.contract.attributes import partition_key, pseudonym, routing_attributes, subject_for
from streams.contract.envelope import CloudEvent
from streams.contract.rules import ERROR_CODES, validate
from streams.demo.generators import EventFactory
from streams.demo.invalid import invalid_corpus
from streams.exceptions import UnknownSchema

TODAY = date(2026, 6, 15)
CORPUS = invalid_corpus(seed=3, today=TODAY)


def _codes(event: CloudEvent, **kwargs: Any) -> list[str]:
    return [e.code for e in validate(event, today=TODAY, **kwargs)]


def _change(event: CloudEvent, **changes: Any) -> CloudEvent:
    data = {**event.data, **changes}
    return replace(event, data=data, extensions=routing_attributes(event.type, data))


def _change_adres(event: CloudEvent, which: str, **changes: Any) -> CloudEvent:
    return _change(event, **{which: {**event.data[which], **changes}})


@pytest.fixture
def factory() -> EventFactory:
    return EventFactory(11, today=TODAY)


@pytest.mark.parametrize(("code", "event"), CORPUS, ids=[code for code, _ in CORPUS])
def test_each_rule_breaks_alone_with_its_own_code(code: str, event: CloudEvent) -> None:
    errors = validate(event, today=TODAY)
    assert [e.code for e in errors] == [code]
    assert errors[0].message == ERROR_CODES[code]


def test_the_invalid_corpus_covers_every_code() -> None:
    assert sorted(code for code, _ in CORPUS) == sorted(ERROR_CODES)


def test_an_event_breaking_three_rules_gets_three_errors(factory: EventFactory) -> None:
    event = factory.verhuisd(soort="INTERGEMEENTELIJK")
    bsn = event.data["bsn"]
    broken = _change_adres(event, "nieuwAdres", postcode="0123AB")
    broken = replace(_change(broken, bsn=f"{bsn[:8]}{(int(bsn[8]) + 1) % 10}"), subject=bsn)
    errors = validate(broken, today=TODAY)
    assert {(e.path, e.code) for e in errors} == {
        ("data.bsn", "bsn_elfproef"),
        ("data.nieuwAdres.postcode", "postcode_format"),
        ("subject", "subject_bsn"),
    }
    assert len(errors) == 3


def test_messages_never_contain_the_offending_values(factory: EventFactory) -> None:
    event = factory.verhuisd(soort="INTERGEMEENTELIJK")
    bsn, adres = event.data["bsn"], event.data["nieuwAdres"]
    broken = _change_adres(replace(event, subject=bsn), "nieuwAdres", postcode="0123 AB")
    broken = _change(broken, bsn=bsn[:8])
    errors = validate(broken, today=TODAY)
    assert len(errors) == 3
    text = " ".join(f"{e.path} {e.message}" for e in errors)
    for value in (bsn, bsn[:8], "0123 AB", adres["straat"], adres["woonplaats"]):
        assert value not in text
    assert all(e.message == ERROR_CODES[e.code] for e in errors)  # fixed text per code


def test_generated_events_are_valid(factory: EventFactory) -> None:
    for event in factory.mixed(300):
        assert validate(event, today=TODAY) == []


def test_dates_up_to_today_are_fine_tomorrow_is_the_future(factory: EventFactory) -> None:
    event = factory.overleden()
    assert _codes(_change(event, datumAangifte=TODAY)) == []
    assert _codes(_change(event, datumAangifte=TODAY + timedelta(days=1))) == ["date_in_future"]


def test_event_time_allows_five_minutes_of_clock_skew(factory: EventFactory) -> None:
    now = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
    event = factory.verhuisd()
    assert _codes(replace(event, time=now + timedelta(minutes=4)), now=now) == []
    late = replace(event, time=now + timedelta(minutes=6))
    assert _codes(late, now=now) == ["time_in_future"]


def test_without_a_clock_validate_uses_the_wall_clock() -> None:
    event = EventFactory(1).verhuisd()  # today by the wall clock
    assert validate(event) == []
    future = replace(event, time=datetime.now(UTC) + timedelta(hours=1))
    assert [e.code for e in validate(future)] == ["time_in_future"]


@pytest.mark.parametrize(
    ("day", "codes"),
    [(date(2022, 3, 23), []), (date(2022, 3, 24), ["gemeentecode_unknown"])],
)
def test_a_move_to_weesp_after_the_merger_is_unknown(day: date, codes: list[str]) -> None:
    event = EventFactory(5, today=TODAY).verhuisd(soort="INTERGEMEENTELIJK")
    if event.data["vorigAdres"]["gemeentecode"] == "0457":
        pytest.fail("seed moved from Weesp; pick another seed")
    moved = _change_adres(event, "nieuwAdres", gemeentecode="0457", woonplaats="Weesp")
    assert _codes(_change(moved, datumAanvangAdreshouding=day)) == codes


def test_the_rni_is_a_valid_gemeente_van_inschrijving(factory: EventFactory) -> None:
    event = factory.overleden()
    rni = _change(event, gemeenteVanInschrijving="1999", gemeenteVanOverlijden=None,
                  landVanOverlijden="BE")  # fmt: skip
    assert _codes(rni) == []


@pytest.mark.parametrize(
    ("soort", "van", "naar", "ok"),
    [
        ("BINNENGEMEENTELIJK", "0363", "0363", True),
        ("BINNENGEMEENTELIJK", "0363", "0344", False),
        ("INTERGEMEENTELIJK", "0363", "0344", True),
        ("INTERGEMEENTELIJK", "0363", "0363", False),
        ("EMIGRATIE", "0363", None, True),
        ("EMIGRATIE", "0363", "0344", False),
        ("EMIGRATIE", None, None, False),
        ("IMMIGRATIE", None, "0344", True),
        ("IMMIGRATIE", "0363", "0344", False),
        ("INTERGEMEENTELIJK", None, "0344", False),
    ],
)
def test_soort_agrees_with_the_addresses(
    factory: EventFactory, soort: str, van: str | None, naar: str | None, ok: bool
) -> None:
    def adres(code: str | None) -> dict[str, Any]:
        return factory.adres(code) if code else factory.adres_buitenland()

    event = factory.verhuisd()
    moved = _change(event, soort=soort, vorigAdres=adres(van), nieuwAdres=adres(naar))
    assert _codes(moved) == ([] if ok else ["soort_inconsistent"])


def test_a_dutch_address_missing_everything_names_every_field(factory: EventFactory) -> None:
    event = factory.verhuisd(soort="INTERGEMEENTELIJK")
    empty = dict.fromkeys(event.data["nieuwAdres"]) | {"adresregels": []}
    errors = validate(_change(event, nieuwAdres=empty), today=TODAY)
    assert {(e.path, e.code) for e in errors} == {
        (f"data.nieuwAdres.{name}", "adres_incomplete")
        for name in ("straat", "huisnummer", "postcode", "woonplaats", "gemeentecode")
    }


def test_zaak_event_needs_its_uuid_as_subject(factory: EventFactory) -> None:
    event = factory.zaak_gemuteerd()
    assert _codes(replace(event, subject=None)) == ["subject_mismatch"]


def test_routing_attributes_may_be_absent_but_not_wrong(factory: EventFactory) -> None:
    event = factory.zaak_gemuteerd()
    assert _codes(replace(event, extensions={})) == []
    wrong = event.with_extensions(bronorganisatie="002564440")
    assert _codes(wrong) == ["routing_mismatch"]


def test_structure_problems_are_reported_without_crashing(factory: EventFactory) -> None:
    event = factory.verhuisd()
    assert _codes(replace(event, data=None)) == ["field_type"]  # type: ignore[arg-type]
    assert _codes(replace(event, data={}, extensions={})) == ["field_required"] * 5
    readonly = replace(event, data=MappingProxyType(dict(event.data)))
    assert _codes(readonly) == []


def test_unknown_type_is_reported_and_data_left_alone(factory: EventFactory) -> None:
    event = replace(factory.verhuisd(), type="nl.brp.persoon-geboren", data={"x": object()})
    assert _codes(event) == ["type_unknown"]


def test_id_may_be_256_characters_not_more(factory: EventFactory) -> None:
    event = factory.verhuisd()
    assert _codes(replace(event, id="x" * 256)) == []
    assert _codes(replace(event, id="x" * 257)) == ["id_format"]


def test_later_schema_versions_are_accepted(factory: EventFactory) -> None:
    event = factory.verhuisd()
    assert _codes(replace(event, dataschema=event.dataschema[:-1] + "2")) == []
    assert _codes(replace(event, dataschema=event.dataschema[:-1] + "02")) == [
        "dataschema_mismatch"
    ]


# -- what the bus derives from data ---------------------------------------------------------


def test_pseudonym_is_a_keyed_hash() -> None:
    a = pseudonym("111222333", b"geheim")
    assert a == pseudonym("111222333", b"geheim")
    assert a != pseudonym("111222333", b"ander geheim")
    assert a != pseudonym("123456782", b"geheim")
    assert len(a) == 64 and "111222333" not in a
    with pytest.raises(ValueError):
        pseudonym("111222333", b"")


def test_routing_partition_key_and_subject(factory: EventFactory) -> None:
    emigratie = factory.verhuisd(soort="EMIGRATIE")
    van = emigratie.data["vorigAdres"]["gemeentecode"]
    assert routing_attributes(emigratie.type, emigratie.data) == {"gemeentevan": van}
    key = partition_key(emigratie.type, emigratie.data, b"k")
    assert key == pseudonym(emigratie.data["bsn"], b"k").encode("ascii")
    assert subject_for(emigratie.type, emigratie.data) is None

    dood = factory.overleden()
    gemeente = dood.data["gemeenteVanInschrijving"]
    assert routing_attributes(dood.type, dood.data) == {"gemeente": gemeente}

    zaak = factory.zaak_gemuteerd()
    assert routing_attributes(zaak.type, zaak.data) == {
        "bronorganisatie": zaak.data["bronorganisatie"],
        "zaaktype": zaak.data["zaaktype"],
        "vertrouwelijkheid": zaak.data["vertrouwelijkheidaanduiding"],
    }
    assert partition_key(zaak.type, zaak.data, b"k") == zaak.data["zaakUuid"].encode("ascii")
    assert subject_for(zaak.type, zaak.data) == zaak.data["zaakUuid"]

    with pytest.raises(UnknownSchema):
        routing_attributes("nl.brp.persoon-geboren", {})


def test_today_is_a_day_in_amsterdam(factory: EventFactory) -> None:
    event = factory.verhuisd()
    late = datetime(2026, 6, 15, 21, 59, tzinfo=UTC)  # 23:59 in Amsterdam (CEST)
    assert _codes(replace(event, time=late)) == []
    tomorrow = datetime(2026, 6, 15, 22, 30, tzinfo=UTC)  # 00:30 on 16 June in Amsterdam
    assert _codes(replace(event, time=tomorrow)) == ["time_in_future"]
