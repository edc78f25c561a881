"""Matching events to subscriptions: the municipal setup, volgindicaties, and the cost per event."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from streams.contract import codec
from streams.contract.attributes import (
    OVERLEDEN,
    VERHUISD,
    ZAAK_GEMUTEERD,
    pseudonym,
    routing_attributes,
)
from streams.contract.envelope import CloudEvent
from streams.routing.matching import Matcher, SubscriptionIndex, event_attributes
from streams.routing.subscriptions import Subscription

KEY = b"test-pseudonym-key"
TODAY = date(2024, 6, 1)
BRP = "urn:nld:oin:00000001823288444000:systeem:BRP-component"
OPEN_ZAAK = "urn:nld:oin:00000001002220647000:systeem:OpenZaak"
ZAAKTYPE = "https://catalogi.example/api/v1/zaaktypen/0b2d4a4c-3b1b-4b8e-9c11-5f0f4e2d6a10"
PERSON_TYPES = [VERHUISD, OVERLEDEN]

FOLLOWED = ["999993653", "999990019", "999992223"]
EXPIRED = "999991905"
STRANGER = "999995157"


def sub(id_: str, types: list[str], filters: list[Any] | None = None, **extra: Any) -> Subscription:
    return Subscription.model_validate(
        {
            "id": id_,
            "sink": f"https://{id_}.example/events",
            "protocol": "HTTP",
            "types": types,
            "filters": filters or [],
            "owner": id_,
            "purpose": "test",
            **extra,
        }
    )


def gemeente(code: str) -> Subscription:
    """A municipality: moves into and out of it, deaths of its residents."""
    moves = {"any": [{"exact": {"gemeentevan": code}}, {"exact": {"gemeentenaar": code}}]}
    residents = {"exact": {"gemeente": code}}
    return sub(f"gemeente-{code}", PERSON_TYPES, [{"any": [moves, residents]}])


def adres(code: str) -> dict[str, Any]:
    return {"gemeentecode": code, "land": None, "adresregels": []}


def event(type_: str, data: dict[str, Any], *, source: str = BRP, id_: str = "1") -> CloudEvent:
    return CloudEvent(
        id=id_,
        source=source,
        type=type_,
        time=datetime(2024, 6, 1, 9, 30, tzinfo=UTC),
        dataschema=f"urn:gemeentebus:schema:{type_}:1",
        data=data,
        extensions=routing_attributes(type_, data),
    )


def move(bsn: str, van: str, naar: str) -> CloudEvent:
    data = {"bsn": bsn, "vorigAdres": adres(van), "nieuwAdres": adres(naar)}
    return event(VERHUISD, data)


def death(bsn: str, code: str) -> CloudEvent:
    return event(OVERLEDEN, {"bsn": bsn, "gemeenteVanInschrijving": code})


def zaak(bronorganisatie: str) -> CloudEvent:
    data = {
        "zaakUuid": "3f1e2d4c-0000-4000-8000-000000000001",
        "bronorganisatie": bronorganisatie,
        "zaaktype": ZAAKTYPE,
        "vertrouwelijkheidaanduiding": "openbaar",
    }
    return event(ZAAK_GEMUTEERD, data, source=OPEN_ZAAK)


def ids(found: list[Subscription]) -> list[str]:
    return [s.id for s in found]


def person(bsn: str) -> str:
    return pseudonym(bsn, KEY)


@pytest.fixture
def index() -> SubscriptionIndex:
    volgindicaties: dict[str, date | None] = {person(bsn): None for bsn in FOLLOWED[:2]}
    volgindicaties[person(FOLLOWED[2])] = date(2024, 6, 1)  # ends today: still active
    volgindicaties[person(EXPIRED)] = date(2024, 5, 31)
    return SubscriptionIndex(
        [
            gemeente("0363"),
            gemeente("0344"),
            sub("brp-afnemer-alles", PERSON_TYPES, source=BRP),
            sub(
                "zaaksysteem-0363", [ZAAK_GEMUTEERD], [{"exact": {"bronorganisatie": "002220647"}}]
            ),
            sub(
                "pensioenfonds",
                PERSON_TYPES,
                volgindicaties=volgindicaties,
                volgindicatiesOnly=True,
            ),
        ]
    )


def test_move_between_two_gemeenten_reaches_both_and_the_brp(index: SubscriptionIndex) -> None:
    found = index.match(move(STRANGER, "0363", "0344"), person(STRANGER), TODAY)
    assert ids(found) == ["brp-afnemer-alles", "gemeente-0344", "gemeente-0363"]


def test_death_reaches_the_gemeente_of_residence(index: SubscriptionIndex) -> None:
    found = index.match(death(STRANGER, "0344"), person(STRANGER), TODAY)
    assert ids(found) == ["brp-afnemer-alles", "gemeente-0344"]


def test_zaak_event_reaches_the_zaaksysteem_of_its_bronorganisatie(
    index: SubscriptionIndex,
) -> None:
    assert ids(index.match(zaak("002220647"), None, TODAY)) == ["zaaksysteem-0363"]
    assert ids(index.match(zaak("001005650"), None, TODAY)) == []


def test_followed_person_is_matched_regardless_of_gemeente(index: SubscriptionIndex) -> None:
    for bsn in FOLLOWED:
        found = index.match(move(bsn, "0599", "0518"), person(bsn), TODAY)
        assert ids(found) == ["brp-afnemer-alles", "pensioenfonds"]
    assert "pensioenfonds" in ids(
        index.match(death(FOLLOWED[0], "0599"), person(FOLLOWED[0]), TODAY)
    )


def test_expired_volgindicatie_stops_matching(index: SubscriptionIndex) -> None:
    assert ids(index.match(move(EXPIRED, "0599", "0518"), person(EXPIRED), TODAY)) == [
        "brp-afnemer-alles"
    ]
    ends_today = person(FOLLOWED[2])
    tomorrow = date(2024, 6, 2)
    assert "pensioenfonds" not in ids(
        index.match(move(FOLLOWED[2], "0599", "0518"), ends_today, tomorrow)
    )


def test_volgindicatie_overrides_filters(index: SubscriptionIndex) -> None:
    followed = person(STRANGER)
    index.upsert(index.get("gemeente-0363").with_volgindicatie(followed))  # type: ignore[union-attr]
    assert "gemeente-0363" in ids(index.match(move(STRANGER, "0599", "0518"), followed, TODAY))
    # a volgindicatie covers the subscription's types only
    assert ids(index.match(zaak("001005650"), followed, TODAY)) == []


def test_source_restricts_by_exact_source(index: SubscriptionIndex) -> None:
    elsewhere = event(VERHUISD, move(STRANGER, "0363", "0344").data, source=OPEN_ZAAK)
    assert ids(index.match(elsewhere, None, TODAY)) == ["gemeente-0344", "gemeente-0363"]


def test_retired_and_removed_subscriptions_never_match(index: SubscriptionIndex) -> None:
    index.upsert(gemeente("0363").retired())
    index.remove("brp-afnemer-alles")
    index.remove("does-not-exist")
    assert ids(index.match(move(STRANGER, "0363", "0344"), None, TODAY)) == ["gemeente-0344"]
    assert "gemeente-0363" not in index
    index.upsert(gemeente("0363"))
    assert ids(index.match(move(STRANGER, "0363", "0344"), None, TODAY)) == [
        "gemeente-0344",
        "gemeente-0363",
    ]


def test_upsert_replaces_the_old_filters(index: SubscriptionIndex) -> None:
    index.upsert(sub("gemeente-0363", PERSON_TYPES, [{"exact": {"gemeentenaar": "0599"}}]))
    assert "gemeente-0363" not in ids(index.match(move(STRANGER, "0363", "0344"), None, TODAY))
    assert "gemeente-0363" in ids(index.match(move(STRANGER, "0344", "0599"), None, TODAY))
    assert len(index) == 5


def test_event_attributes_are_what_filters_see() -> None:
    attributes = event_attributes(move(STRANGER, "0363", "0344"))
    assert attributes["gemeentevan"] == "0363"
    assert attributes["time"] == "2024-06-01T09:30:00.000Z"
    assert "subject" not in attributes
    assert STRANGER not in attributes.values()


@pytest.mark.parametrize("others", [1, 10, 100, 1000])
def test_cost_per_event_does_not_grow_with_unrelated_subscriptions(others: int) -> None:
    # gemeentecodes 1000-2999 are no real gemeente but serve as "some other municipality"
    unrelated = [gemeente(f"{1000 + n}") for n in range(others)]
    unrelated += [
        sub(f"zaak-{n}", [ZAAK_GEMUTEERD], [{"exact": {"bronorganisatie": f"{n:09d}"}}])
        for n in range(others)
    ]
    index = SubscriptionIndex([gemeente("0363"), gemeente("0344"), *unrelated])
    found = index.match(move(STRANGER, "0363", "0344"), person(STRANGER), TODAY)
    assert ids(found) == ["gemeente-0344", "gemeente-0363"]
    assert index.predicates_evaluated == 2


def test_emigration_has_no_gemeentenaar_and_still_reaches_the_old_gemeente(
    index: SubscriptionIndex,
) -> None:
    data = {
        "bsn": STRANGER,
        "vorigAdres": adres("0363"),
        "nieuwAdres": {"gemeentecode": None, "land": "BE", "adresregels": ["Grote Markt 1"]},
    }
    found = index.match(event(VERHUISD, data), person(STRANGER), TODAY)
    assert ids(found) == ["brp-afnemer-alles", "gemeente-0363"]


def test_one_volgindicatie_more_or_less_without_reindexing(index: SubscriptionIndex) -> None:
    fund = index.get("pensioenfonds")
    assert fund is not None
    stranger = person(STRANGER)
    fund.volgindicaties[stranger] = None  # as the store's reader changes it in place
    index.follow("pensioenfonds", stranger, following=True)
    assert "pensioenfonds" in ids(index.match(move(STRANGER, "0599", "0518"), stranger, TODAY))
    del fund.volgindicaties[stranger]
    index.follow("pensioenfonds", stranger, following=False)
    assert "pensioenfonds" not in ids(index.match(move(STRANGER, "0599", "0518"), stranger, TODAY))
    index.follow("does-not-exist", stranger, following=True)  # ignored
    index.remove("pensioenfonds")  # its followers go with it
    assert ids(index.match(move(FOLLOWED[0], "0599", "0518"), person(FOLLOWED[0]), TODAY)) == [
        "brp-afnemer-alles"
    ]


VECTORS = Path(__file__).parents[2] / "vectors"


def _read_back(type_: str, **change: Any) -> Any:
    """The test vector of a type as a consumer hands it out (key, headers as a list, value)."""
    vector = json.loads((VECTORS / type_ / "event.json").read_text(encoding="utf-8"))
    record = codec.to_kafka(codec.from_json(vector), key=b"k")
    found = {"key": record.key, "headers": list(record.headers), "value": record.value}
    return SimpleNamespace(**(found | change))


def test_a_matcher_projects_what_its_subscription_receives_and_skips_the_rest() -> None:
    matcher = Matcher(gemeente("0363"), KEY)  # the vector's move: from 0344 into 0363
    found = matcher.match(_read_back(VERHUISD))
    assert found is not None
    assert found.data["bsn"] == "999993653"
    assert Matcher(gemeente("0599"), KEY).match(_read_back(VERHUISD)) is None
    assert matcher.match(_read_back(ZAAK_GEMUTEERD)) is None


def test_a_matcher_skips_an_unreadable_record_and_never_raises() -> None:
    matcher = Matcher(gemeente("0363"), KEY)
    good = _read_back(VERHUISD)
    null_header = [(name, None if name == "ce_id" else value) for name, value in good.headers]
    assert matcher.match(_read_back(VERHUISD, headers=null_header)) is None
    assert matcher.match(_read_back(VERHUISD, value=None)) is None
    assert matcher.match(_read_back(VERHUISD, value=b"\xff")) is None
