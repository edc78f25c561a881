"""Generated events: valid, reproducible, realistic, and consistent over a population."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, date, datetime
from typing import Any

import pytest

from streams.contract import gemeenten, values
from streams.contract.attributes import routing_attributes, subject_for
from streams.contract.envelope import CloudEvent
from streams.contract.rules import validate
from streams.demo.generators import BRP_SOURCE, EventFactory

TODAY = date(2026, 6, 15)
START_OF_TODAY = datetime(2026, 6, 14, 22, 0, tzinfo=UTC)  # midnight in Amsterdam


@pytest.fixture(scope="module")
def streams_by_seed() -> dict[int, list[CloudEvent]]:
    return {seed: EventFactory(seed, today=TODAY).mixed(1000) for seed in (0, 1, 2, 42)}


def test_generated_events_validate_clean(streams_by_seed: dict[int, list[CloudEvent]]) -> None:
    for seed, events in streams_by_seed.items():
        broken = [(e.type, validate(e, today=TODAY)) for e in events if validate(e, today=TODAY)]
        assert broken == [], f"seed {seed}"


def test_the_same_seed_gives_the_same_events() -> None:
    assert EventFactory(9, today=TODAY).mixed(50) == EventFactory(9, today=TODAY).mixed(50)
    assert EventFactory(9, today=TODAY).mixed(50) != EventFactory(10, today=TODAY).mixed(50)


def test_every_type_and_soort_occurs(streams_by_seed: dict[int, list[CloudEvent]]) -> None:
    events = streams_by_seed[0]
    assert {e.type for e in events} == {
        "nl.brp.persoon-verhuisd",
        "nl.brp.persoon-overleden",
        "nl.overheid.zaken.zaak-gemuteerd",
    }
    soorten = {e.data["soort"] for e in events if e.type == "nl.brp.persoon-verhuisd"}
    assert soorten == {"BINNENGEMEENTELIJK", "INTERGEMEENTELIJK", "EMIGRATIE", "IMMIGRATIE"}


def test_envelope_is_filled_in_as_the_bus_would(
    streams_by_seed: dict[int, list[CloudEvent]],
) -> None:
    events = streams_by_seed[1]
    for e in events:
        assert e.dataschema == f"urn:gemeentebus:schema:{e.type}:1"
        assert dict(e.extensions) == routing_attributes(e.type, e.data)
        assert e.subject == subject_for(e.type, e.data)
        assert values.is_source(e.source)
        assert e.time.tzinfo is UTC and e.time.microsecond % 1000 == 0  # timestamp-millis
        if e.type.startswith("nl.brp."):
            assert e.source == BRP_SOURCE
    assert len({e.id for e in events}) == len(events)
    assert [e.time for e in events] == sorted(e.time for e in events)
    assert events[-1].time < START_OF_TODAY


def _gemeentecodes(events: list[CloudEvent]) -> Counter[str]:
    codes: Counter[str] = Counter()
    for e in events:
        if e.type == "nl.brp.persoon-verhuisd":
            codes.update(a["gemeentecode"] for a in (e.data["nieuwAdres"],) if a["gemeentecode"])
    return codes


def test_large_gemeenten_weigh_most(streams_by_seed: dict[int, list[CloudEvent]]) -> None:
    codes = _gemeentecodes(streams_by_seed[2])
    top = {code for code, _ in codes.most_common(6)}
    assert {"0363", "0599"} <= top
    assert all(code in gemeenten.current_codes() for code in codes)
    assert len(codes) > 50  # the small ones do occur


def test_person_data_looks_real(streams_by_seed: dict[int, list[CloudEvent]]) -> None:
    for e in streams_by_seed[42]:
        if e.type == "nl.overheid.zaken.zaak-gemuteerd":
            continue
        assert values.elfproef(e.data["bsn"])
        for name in ("vorigAdres", "nieuwAdres"):
            adres: dict[str, Any] | None = e.data.get(name)
            if adres and adres["land"] is None:
                assert values.is_postcode(adres["postcode"])
                assert adres["nummeraanduidingIdentificatie"].startswith(adres["gemeentecode"])
    amsterdam = [
        a
        for e in streams_by_seed[42]
        if e.type == "nl.brp.persoon-verhuisd"
        for a in (e.data["nieuwAdres"],)
        if a["gemeentecode"] == "0363"
    ]
    assert amsterdam and all(1011 <= int(a["postcode"][:4]) <= 1109 for a in amsterdam)
    assert all(a["woonplaats"] == "Amsterdam" for a in amsterdam)


def test_a_persons_next_move_starts_where_the_last_ended(
    streams_by_seed: dict[int, list[CloudEvent]],
) -> None:
    for events in streams_by_seed.values():
        last: dict[str, dict[str, Any]] = {}
        since: dict[str, date] = {}
        dead: set[str] = set()
        repeat_movers = 0
        for e in events:
            if e.type == "nl.overheid.zaken.zaak-gemuteerd":
                continue
            bsn = e.data["bsn"]
            assert bsn not in dead, "the dead do not move or die twice"
            if e.type == "nl.brp.persoon-overleden":
                dead.add(bsn)
                assert e.data["datumOverlijden"] >= since.get(bsn, date.min)
                continue
            if bsn in last:
                repeat_movers += 1
                assert e.data["vorigAdres"] == last[bsn]
                assert e.data["datumAanvangAdreshouding"] >= since[bsn]
            last[bsn] = e.data["nieuwAdres"]
            since[bsn] = e.data["datumAanvangAdreshouding"]
        assert repeat_movers > 50


def test_zaken_go_through_their_steps_in_order(
    streams_by_seed: dict[int, list[CloudEvent]],
) -> None:
    by_zaak: dict[str, list[CloudEvent]] = defaultdict(list)
    for e in streams_by_seed[0]:
        if e.type == "nl.overheid.zaken.zaak-gemuteerd":
            by_zaak[e.data["zaakUuid"]].append(e)
    assert len(by_zaak) > 20
    for steps in by_zaak.values():
        first = steps[0].data
        assert (first["resource"], first["actie"]) == ("zaak", "create")
        assert first["resourceUrl"] == first["zaakUrl"]
        assert first["zaakUrl"].endswith(f"/zaken/api/v1/zaken/{first['zaakUuid']}")
        assert first["zaaktype"].split("/zaaktypen/")[0].endswith("/catalogi/api/v1")
        assert values.elfproef(first["bronorganisatie"])
        statussen = [s.data["statusOmschrijving"] for s in steps if s.data["resource"] == "status"]
        assert statussen == ["Ontvangen", "In behandeling", "Afgehandeld"][: len(statussen)]
        assert len({s.source for s in steps}) == 1


def test_single_events_can_be_asked_for() -> None:
    factory = EventFactory(3, today=TODAY)
    assert factory.verhuisd(soort="IMMIGRATIE").data["vorigAdres"]["land"] is not None
    assert factory.verhuisd(soort="EMIGRATIE").data["nieuwAdres"]["land"] is not None
    for event in (factory.verhuisd(), factory.overleden(), factory.zaak_gemuteerd()):
        assert validate(event, today=TODAY) == []
