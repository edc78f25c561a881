"""The grants module alone: which rule suspends, what a binding does to matching and fields.

No broker: `Grants.bind` is what the subscription set applies to every subscription it hands
out; the broker tests are in `tests/streams/http/test_api_grants.py` and the dispatcher's.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from streams.config import ClientConfig, Settings
from streams.contract.attributes import OVERLEDEN, VERHUISD, ZAAK_GEMUTEERD, pseudonym
from streams.contract.attributes import routing_attributes as attributes_of
from streams.contract.envelope import CloudEvent
from streams.exceptions import ConfigurationError
from streams.routing.grants import Grants, covered
from streams.routing.matching import SubscriptionIndex
from streams.routing.records import Records, volgindicatie_key
from streams.routing.sealing import Keyring
from streams.routing.subscriptions import Subscription, projection

KEY = b"test-pseudonym-key"
TODAY = date(2024, 6, 1)
BSN = "999993653"
INVOLVES_0363 = {"any": [{"exact": {"gemeentevan": "0363"}}, {"exact": {"gemeentenaar": "0363"}}]}


def client(client_id: str, **subscribe: Any) -> ClientConfig:
    return ClientConfig.model_validate(
        {"id": client_id, "token_sha256": "0" * 64, "subscribe": subscribe}
    )


GEMEENTE = client(
    "gemeente-0363",
    types=[VERHUISD, OVERLEDEN],
    fields={VERHUISD: ["soort", "nieuwAdres"]},
    filters={VERHUISD: [INVOLVES_0363]},
    volgindicaties=True,
)
GRANTS = Grants(
    (
        GEMEENTE,
        ClientConfig(id="beheer", token_sha256="1" * 64, operator=True),
        ClientConfig(id="publisher", token_sha256="2" * 64, publish={"types": ["*"]}),  # type: ignore[arg-type]
    )
)


def sub(owner: str = "gemeente-0363", **extra: Any) -> Subscription:
    return Subscription.model_validate(
        {
            "id": "s",
            "sink": "https://gemeente.example/events",
            "protocol": "HTTP",
            "types": [VERHUISD],
            "owner": owner,
            "purpose": "test",
            **extra,
        }
    )


def move(van: str, naar: str, bsn: str = BSN) -> CloudEvent:
    data = {
        "bsn": bsn,
        "soort": "INTERGEMEENTELIJK",
        "vorigAdres": {"gemeentecode": van, "postcode": "1011AB"},
        "nieuwAdres": {"gemeentecode": naar, "postcode": "3511AA"},
    }
    return CloudEvent(
        id=f"{van}-{naar}",
        source="urn:nld:oin:00000001823288444000:systeem:BRP-component",
        type=VERHUISD,
        time=datetime(2024, 6, 1, 9, 30, tzinfo=UTC),
        dataschema=f"urn:gemeentebus:schema:{VERHUISD}:1",
        data=data,
        extensions=attributes_of(VERHUISD, data),
    )


@pytest.mark.parametrize(
    ("subscription", "code"),
    [
        (sub(owner="vertrokken"), "owner_unknown"),
        (sub(owner="publisher"), "not_a_subscriber"),
        (sub(types=[ZAAK_GEMUTEERD]), "type_not_granted"),
        (sub(fields=["bsn", "soort"]), "fields_not_granted"),
        (sub(fields=["nieuwAdres.gemeentecode", "vorigAdres"]), "fields_not_granted"),
    ],
)
def test_each_rule_the_grant_no_longer_covers_suspends(
    subscription: Subscription, code: str
) -> None:
    bound = GRANTS.bind(subscription)
    assert bound.suspension is not None and bound.suspension.code == code
    assert not bound.active and bound.public_dict()["status"] == "suspended"
    assert SubscriptionIndex([bound]).match(move("0363", "0344"), None, TODAY) == []
    assert "suspension" not in bound.record_dict()  # never stored: it follows the grant


def test_volgindicaties_its_grant_lacks_suspend() -> None:
    followed = sub(types=[OVERLEDEN]).with_volgindicatie(pseudonym(BSN, KEY))
    assert GRANTS.bind(followed).active
    withdrawn = Grants((client("gemeente-0363", types=["*"]),)).bind(followed)
    assert withdrawn.suspension is not None
    assert withdrawn.suspension.code == "volgindicaties_not_granted"


def test_an_operators_own_subscription_is_unbound() -> None:
    bound = GRANTS.bind(sub(owner="beheer", types=[ZAAK_GEMUTEERD]))
    assert bound.active and bound.suspension is None


def test_the_required_filter_holds_whatever_the_subscription_sends() -> None:
    """gemeente-0363 with no filter, or with one for 0344 only, receives moves of 0363 only."""
    for own in ([], [{"exact": {"gemeentenaar": "0344"}}]):
        bound = GRANTS.bind(sub(filters=own))
        index = SubscriptionIndex([bound])
        assert index.match(move("0344", "0599"), None, TODAY) == []
        expected = [] if own else ["s"]
        assert [s.id for s in index.match(move("0363", "0599"), None, TODAY)] == expected
    both = SubscriptionIndex([GRANTS.bind(sub(filters=[{"exact": {"gemeentenaar": "0344"}}]))])
    assert [s.id for s in both.match(move("0363", "0344"), None, TODAY)] == ["s"]


def test_the_required_filter_binds_a_followed_persons_events_too() -> None:
    person = pseudonym(BSN, KEY)
    followed = sub(volgindicatiesOnly=True).with_volgindicatie(person)
    index = SubscriptionIndex([GRANTS.bind(followed)])
    assert index.match(move("0344", "0599"), person, TODAY) == []
    assert [s.id for s in index.match(move("0599", "0363"), person, TODAY)] == ["s"]


def test_no_fields_gets_the_grants_set_and_never_everything() -> None:
    data = move("0363", "0344").data
    bound = GRANTS.bind(sub())
    assert projection(bound, VERHUISD)(data) == {
        "soort": "INTERGEMEENTELIJK",
        "nieuwAdres": {"gemeentecode": "0344", "postcode": "3511AA"},
    }
    fewer = GRANTS.bind(sub(fields=["nieuwAdres.gemeentecode"]))
    assert projection(fewer, VERHUISD)(data) == {"nieuwAdres": {"gemeentecode": "0344"}}
    unbounded = GRANTS.bind(sub(types=[OVERLEDEN]))  # no fields bound for deaths
    death = {"bsn": BSN, "datumOverlijden": "2024-05-30"}
    assert projection(unbounded, OVERLEDEN)(death) == death


def test_a_granted_record_covers_its_parts_not_the_other_way_round() -> None:
    assert covered("nieuwAdres.postcode", ["nieuwAdres"])
    assert not covered("nieuwAdres", ["nieuwAdres.postcode"])
    assert not covered("nieuwAdresX", ["nieuwAdres"])


def test_a_grant_that_does_not_fit_its_types_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="not in types"):
        client("x", types=[VERHUISD], fields={OVERLEDEN: ["bsn"]})
    with pytest.raises(ConfigurationError, match="no field"):
        Grants((client("x", types=[VERHUISD], fields={VERHUISD: ["geboortedatum"]}),))
    with pytest.raises(ConfigurationError, match="unknown attribute"):
        Grants((client("x", types=[VERHUISD], filters={VERHUISD: [{"exact": {"gemeente": "1"}}]}),))
    with pytest.raises(ConfigurationError, match="unknown type"):
        Grants((client("x", types=["nl.*"], fields={"nl.brp.bestaat-niet": ["bsn"]}),))
    Grants.from_settings(Settings(mode="test", clients=(GEMEENTE,)))  # a good one starts


def test_a_volgindicatie_record_its_grant_does_not_allow_suspends_and_its_removal_resumes() -> None:
    """A volgindicatie read after its subscription's record (compaction may order them so)."""
    not_following = Grants((client("gemeente-0363", types=["*"]),))
    records = Records(Keyring(bytes(32)), grants=not_following)
    subscription = sub(types=[OVERLEDEN])
    for key, value in records.put(subscription):
        records.apply(key, value)
    assert records.subscriptions["s"].active
    person = pseudonym(BSN, KEY)
    followed = records.apply(volgindicatie_key("s", person), b'{"einddatum": null}')
    assert followed.pseudonym is None and followed.subscription is not None  # a whole change
    assert followed.subscription.suspension is not None
    assert followed.subscription.suspension.code == "volgindicaties_not_granted"
    removed = records.apply(volgindicatie_key("s", person), None)
    assert removed.subscription is not None and removed.subscription.active
