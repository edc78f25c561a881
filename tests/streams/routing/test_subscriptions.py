"""The Subscription model: validation, projection of data, masking of the sink credential."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from pydantic import ValidationError

from streams.contract.attributes import OVERLEDEN, VERHUISD, ZAAK_GEMUTEERD, pseudonym
from streams.routing.subscriptions import Subscription, new_subscription_id, projection

KEY = b"test-pseudonym-key"
BSN = "999993653"

MOVE_DATA: dict[str, Any] = {
    "bsn": BSN,
    "soort": "INTERGEMEENTELIJK",
    "vorigAdres": {
        "nummeraanduidingIdentificatie": "0363200000123456",
        "straat": "Damrak",
        "huisnummer": 1,
        "postcode": "1012 LG",
        "woonplaats": "Amsterdam",
        "gemeentecode": "0363",
        "land": None,
        "adresregels": [],
    },
    "nieuwAdres": {
        "nummeraanduidingIdentificatie": "0344200000654321",
        "straat": "Domplein",
        "huisnummer": 29,
        "postcode": "3512 JE",
        "woonplaats": "Utrecht",
        "gemeentecode": "0344",
        "land": None,
        "adresregels": [],
    },
    "datumAanvangAdreshouding": date(2024, 5, 1),
}


def subscription(**changes: Any) -> Subscription:
    body: dict[str, Any] = {
        "id": "gemeente-0363-verhuizingen",
        "sink": "https://gemeente.example/notificaties",
        "protocol": "HTTP",
        "types": [VERHUISD],
        "owner": "gemeente-0363",
        "purpose": "bijhouden basisregistratie personen",
        **changes,
    }
    return Subscription.model_validate(body)


def error_text(caught: pytest.ExceptionInfo[ValidationError]) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in caught.value.errors())


def test_valid_subscription_in_the_api_shape() -> None:
    sub = subscription(
        filters=[{"exact": {"gemeentenaar": "0363"}}],
        fields=["soort", "nieuwAdres.gemeentecode"],
        subscriberReference="ref-1",
        callbackCheck=False,
    )
    assert sub.types == (VERHUISD,)
    assert sub.subscriber_reference == "ref-1"
    assert not sub.callback_check
    assert sub.active
    assert sub.filter({"gemeentenaar": "0363"})
    assert not sub.filter({"gemeentenaar": "0344"})
    assert len(new_subscription_id()) <= 64


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"types": ["nl.brp.persoon-geboren"]}, "unknown event type(s): nl.brp.persoon-geboren"),
        ({"types": []}, "types"),
        ({"types": [VERHUISD, VERHUISD]}, "listed twice"),
        ({"fields": ["huisnummer"]}, "'huisnummer' is no field of nl.brp.persoon-verhuisd"),
        ({"fields": ["nieuwAdres.bestaatNiet"]}, "'nieuwAdres.bestaatNiet' is no field"),
        ({"fields": ["bronorganisatie"]}, "'bronorganisatie' is no field"),
        ({"filters": [{"regex": {"type": "x"}}]}, "filters[0]: unknown filter dialect"),
        (
            {"filters": [{"exact": {"gemeente": "0363"}}]},
            "filters[0].exact.gemeente: unknown attribute",
        ),
        ({"filters": [{"any": []}]}, "filters[0].any: `any` needs at least one"),
        ({"id": "Not_Valid"}, "id"),
        ({"protocol": "AMQP"}, "protocol"),
        ({"sink": "gemeente.example/notificaties"}, "absolute http(s) URL"),
        ({"status": "paused"}, "status"),
        ({"owner": ""}, "owner"),
        ({"unknown": 1}, "unknown"),
        (
            {"volgindicatiesOnly": True, "filters": [{"exact": {"gemeentenaar": "0363"}}]},
            "filters have no effect",
        ),
    ],
)
def test_invalid_subscriptions_say_what_is_wrong(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        subscription(**changes)
    assert expected in error_text(caught)


def test_fields_of_any_of_its_types_are_accepted() -> None:
    sub = subscription(types=[VERHUISD, OVERLEDEN], fields=["bsn", "datumOverlijden", "soort"])
    assert sub.fields == ("bsn", "datumOverlijden", "soort")


def test_filters_may_name_routing_attributes_of_every_type_it_covers() -> None:
    sub = subscription(
        types=[VERHUISD, OVERLEDEN],
        filters=[{"any": [{"exact": {"gemeente": "0363"}}, {"exact": {"gemeentenaar": "0363"}}]}],
    )
    assert sub.filter({"gemeente": "0363"})


def test_kafka_sink_is_informational() -> None:
    sub = subscription(protocol="KAFKA", sink="gemeentebus.deliver.gemeente-0363")
    assert sub.protocol == "KAFKA"


def test_datacontenttype_follows_the_protocol() -> None:
    json_only = [{"exact": {"datacontenttype": "application/json"}}]
    assert subscription(filters=json_only).filter({})
    assert not subscription(protocol="KAFKA", sink="topic", filters=json_only).filter({})


def test_projection_strips_top_level_and_nested_fields() -> None:
    sub = subscription(fields=["soort", "nieuwAdres.gemeentecode", "nieuwAdres.postcode"])
    project = projection(sub, VERHUISD)
    assert project(MOVE_DATA) == {
        "soort": "INTERGEMEENTELIJK",
        "nieuwAdres": {"gemeentecode": "0344", "postcode": "3512 JE"},
    }
    assert projection(sub, VERHUISD) is project  # compiled once per (subscription, type)
    assert MOVE_DATA["vorigAdres"]["straat"] == "Damrak"  # the event's data is left alone


def test_projection_keeps_a_listed_record_whole_and_bsn_only_when_listed() -> None:
    sub = subscription(fields=["bsn", "vorigAdres", "vorigAdres.postcode"])
    assert projection(sub, VERHUISD)(MOVE_DATA) == {
        "bsn": BSN,
        "vorigAdres": MOVE_DATA["vorigAdres"],
    }
    without_bsn = subscription(fields=["datumAanvangAdreshouding"])
    assert projection(without_bsn, VERHUISD)(MOVE_DATA) == {
        "datumAanvangAdreshouding": date(2024, 5, 1)
    }


def test_projection_per_type_keeps_only_that_types_fields() -> None:
    sub = subscription(types=[VERHUISD, OVERLEDEN], fields=["gemeenteVanInschrijving", "soort"])
    death = {"bsn": BSN, "gemeenteVanInschrijving": "0363", "datumOverlijden": date(2024, 1, 2)}
    assert projection(sub, OVERLEDEN)(death) == {"gemeenteVanInschrijving": "0363"}
    assert projection(sub, VERHUISD)(MOVE_DATA) == {"soort": "INTERGEMEENTELIJK"}


def test_projection_without_fields_keeps_everything_the_purpose_allows() -> None:
    assert projection(subscription(), VERHUISD)(MOVE_DATA) == MOVE_DATA


def test_sink_credential_is_never_returned_in_full() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.token-value"
    sub = subscription(sinkCredential={"credentialType": "ACCESSTOKEN", "accessToken": token})
    public = sub.public_dict()
    assert token not in str(public)
    assert public["sinkCredential"]["credentialType"] == "ACCESSTOKEN"
    assert public["sinkCredential"]["accessToken"] == "********"
    assert token not in repr(sub)
    assert sub.sink_credential is not None
    assert sub.sink_credential.access_token.get_secret_value() == token
    # the bus's own store keeps the token, and reads it back
    assert Subscription.model_validate(sub.record_dict()) == sub


def test_errors_never_repeat_the_input() -> None:
    with pytest.raises(ValidationError) as caught:
        subscription(volgindicaties={BSN: None}, sinkCredential={"accessToken": "s3cr3t-token"})
    assert BSN not in str(caught.value)
    assert "s3cr3t-token" not in str(caught.value)
    assert "pseudonym" in error_text(caught)


def test_volgindicaties_are_pseudonyms_with_optional_einddatum() -> None:
    followed = pseudonym(BSN, KEY)
    sub = subscription().with_volgindicatie(followed, date(2024, 12, 31))
    assert sub.volgindicatie_active(followed, date(2024, 12, 31))
    assert not sub.volgindicatie_active(followed, date(2025, 1, 1))
    assert subscription().with_volgindicatie(followed).volgindicatie_active(followed, date.max)
    assert not sub.without_volgindicatie(followed).volgindicaties
    assert "volgindicaties" not in sub.public_dict()
    assert BSN not in str(sub.record_dict())


def test_retired_copy_keeps_everything_else() -> None:
    sub = subscription(
        types=[ZAAK_GEMUTEERD], filters=[{"exact": {"bronorganisatie": "002220647"}}]
    )
    retired = sub.retired()
    assert retired.status == "retired"
    assert not retired.active
    assert retired.filters == sub.filters
    assert sub.active
