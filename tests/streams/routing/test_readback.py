"""Reading events back fast: the same delivery records as `Matcher` + `delivery_record`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from streams.config import ClientConfig
from streams.contract.attributes import OVERLEDEN, VERHUISD, ZAAK_GEMUTEERD, pseudonym
from streams.contract.record import KafkaRecord
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.ingress.gate import Gate
from streams.kafka.topics import Topics
from streams.routing.grants import Grants
from streams.routing.matching import Matcher
from streams.routing.readback import Readback
from streams.routing.router import delivery_record
from streams.routing.subscriptions import Subscription

KEY = b"test-pseudonym-key"
REPLAY = {"replay": "0b1e6c9e-5a6f-4c41-9d0c-3a1b2c3d4e5f"}
TODAY = dutch_today()
OFFSET_TIME = b"2024-06-01T12:00:00+02:00"


def _events_records(n: int) -> list[Any]:
    """Events-topic records as a consumer hands them out, timestamps 1 ms apart."""
    gate = Gate(Topics("t"), KEY)
    found = []
    for at, event in enumerate(EventFactory(7, today=TODAY).mixed(n)):
        record = gate.accept(event, today=TODAY).record
        found.append(
            SimpleNamespace(
                key=record.key, headers=list(record.headers), value=record.value, timestamp=at
            )
        )
    return found


RECORDS = _events_records(600)


def _bsns(records: Iterable[Any], n: int) -> list[str]:
    matcher = Matcher(_sub("all", [VERHUISD, OVERLEDEN]), KEY)
    found: list[str] = []
    for record in records:
        event = matcher.match(record)
        if event is not None and event.data["bsn"] not in found:
            found.append(str(event.data["bsn"]))
        if len(found) == n:
            break
    return found


def _sub(
    id_: str, types: list[str], filters: list[Any] | None = None, **extra: Any
) -> Subscription:
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


def _slow(matcher: Matcher, record: Any) -> KafkaRecord | None:
    event = matcher.match(record)
    if event is None:
        return None
    out = delivery_record(event.with_extensions(**REPLAY), record.key)
    return KafkaRecord(
        key=out.key,
        headers=(*out.headers, ("ce_replay", REPLAY["replay"].encode())),
        value=out.value,
    )


FOLLOWED = _bsns(RECORDS, 6)
PEOPLE = {pseudonym(b, KEY): None for b in FOLLOWED[:4]} | {
    pseudonym(FOLLOWED[4], KEY): TODAY - timedelta(days=1)  # an expired volgindicatie
}
SUBSCRIPTIONS = [
    _sub("everything", [VERHUISD, OVERLEDEN, ZAAK_GEMUTEERD]),
    _sub("zaken", [ZAAK_GEMUTEERD]),
    _sub("deaths-projected", [OVERLEDEN], fields=["datumOverlijden"]),
    _sub(
        "gemeente",
        [VERHUISD, OVERLEDEN],
        [{"any": [{"exact": {"gemeentenaar": "0339"}}, {"exact": {"gemeente": "0339"}}]}],
        volgindicaties=PEOPLE,
    ),
    _sub("followers", [VERHUISD, OVERLEDEN], volgindicaties=PEOPLE, volgindicatiesOnly=True),
    _sub("other-source", [VERHUISD], source="urn:nld:oin:1:systeem:elders", volgindicaties=PEOPLE),
    _sub("prefix", [ZAAK_GEMUTEERD], [{"prefix": {"zaaktype": "https://openzaak.o"}}]),
]
# bound to their owners' grants (`streams.routing.grants`): required filters, granted fields
_GRANTS = Grants(
    (
        ClientConfig.model_validate(
            {
                "id": owner,
                "token_sha256": "0" * 64,
                "subscribe": {
                    "types": [VERHUISD, OVERLEDEN],
                    "volgindicaties": True,
                    "fields": {VERHUISD: ["soort", "nieuwAdres.gemeentecode"]},
                    "filters": {
                        VERHUISD: [{dialect: {"gemeentevan": code}}],
                        OVERLEDEN: [{dialect: {"gemeente": code}}],
                    },
                },
            }
        )
        for owner, dialect, code in (
            ("granted", "exact", "0339"),
            ("granted-followers", "prefix", "0"),  # most, not all (not 1999, the RNI)
        )
    )
)
SUBSCRIPTIONS += [
    _GRANTS.bind(_sub("granted", [VERHUISD, OVERLEDEN], volgindicaties=PEOPLE)),
    _GRANTS.bind(
        _sub(
            "granted-followers",
            [VERHUISD, OVERLEDEN],
            volgindicaties=PEOPLE,
            volgindicatiesOnly=True,
        )
    ),
]


@pytest.mark.parametrize("subscription", SUBSCRIPTIONS, ids=lambda s: s.id)
@pytest.mark.parametrize("since", [None, "half"])
def test_the_fast_way_writes_what_the_slow_way_writes(
    subscription: Subscription, since: str | None
) -> None:
    # followed since the middle of the records: earlier ones only by the filters
    followed_since = None if since is None else {p: len(RECORDS) // 2 for p in PEOPLE}
    if since is not None:
        followed_since.pop(pseudonym(FOLLOWED[3], KEY))  # followed, but no known moment
    matcher = Matcher(subscription, KEY, followed_since=followed_since)
    readback = Readback(subscription, KEY, followed_since=followed_since, extensions=REPLAY)
    slow = [_slow(matcher, r) for r in RECORDS]
    fast = [readback.deliverable(r) for r in RECORDS]
    assert fast == slow
    assert any(f is not None for f in fast) or subscription.source is not None


def test_the_subscriptions_above_see_both_matches_and_misses() -> None:
    readback = Readback(SUBSCRIPTIONS[3], KEY, extensions=REPLAY)
    written = sum(readback.deliverable(r) is not None for r in RECORDS)
    assert 0 < written < len(RECORDS)


def _odd(record: Any, **change: Any) -> Any:
    return SimpleNamespace(**(vars(record) | change))


def test_an_odd_record_is_judged_the_slow_way_and_never_raises() -> None:
    subscription = SUBSCRIPTIONS[0]
    matcher = Matcher(subscription, KEY)
    readback = Readback(subscription, KEY, extensions=REPLAY)
    good = RECORDS[0]
    headers = good.headers
    odd = [
        _odd(good, headers=[(n, None if n == "ce_id" else v) for n, v in headers]),
        _odd(good, headers=[*headers, ("ce_id", b"again")]),
        _odd(good, headers=[("Content-Type" if n == "content-type" else n, v) for n, v in headers]),
        _odd(good, headers=[(n, b"urn:x" if n == "ce_dataschema" else v) for n, v in headers]),
        _odd(good, headers=[(n, b"\xff" if n == "ce_source" else v) for n, v in headers]),
        _odd(good, headers=[(n, v) for n, v in headers if n != "ce_time"]),
        _odd(good, headers=[*headers, ("ce_Bad-Name", b"x")]),
        _odd(good, headers=[*headers, ("ce_extra", b"x"), ("ce_subject", b"s")]),
        _odd(good, headers=[(n, OFFSET_TIME if n == "ce_time" else v) for n, v in headers]),
        _odd(good, value=None),
        _odd(good, value=b"\xff"),
        _odd(good, value=good.value + b"\x00"),
    ]  # fmt: skip
    for record in odd:
        assert readback.deliverable(record) == _slow(matcher, record)


def test_a_type_the_subscription_does_not_take_is_not_decoded() -> None:
    readback = Readback(SUBSCRIPTIONS[1], KEY, extensions=REPLAY)  # zaken only
    move = next(r for r in RECORDS if (("ce_type", VERHUISD.encode()) in r.headers))
    assert readback.deliverable(_odd(move, value=b"not avro at all")) is None


def test_an_expired_volgindicatie_opens_nothing() -> None:
    followers = SUBSCRIPTIONS[4]
    readback = Readback(followers, KEY, extensions=REPLAY)
    expired = pseudonym(FOLLOWED[4], KEY)
    assert followers.volgindicaties[expired] == TODAY - timedelta(days=1)
    assert date.today() >= TODAY - timedelta(days=1)
    written = [readback.deliverable(r) for r in RECORDS]
    gate_people = {pseudonym(b, KEY) for b in FOLLOWED[:4]}
    assert any(w is not None for w in written)
    matcher = Matcher(followers, KEY)
    for record, out in zip(RECORDS, written, strict=True):
        event = matcher.match(record)
        assert (out is None) == (event is None)
        if event is not None:
            assert pseudonym(str(event.data["bsn"]), KEY) in gate_people


def test_the_body_is_quoted_ordered_and_merged_as_the_encoder_writes_it() -> None:
    # the body is written piece by piece: strings that need escaping, optional attributes,
    # extensions before and after the readback's own, a clash with it, other header orders
    subscription = SUBSCRIPTIONS[0]
    matcher = Matcher(subscription, KEY)
    readback = Readback(subscription, KEY, extensions=REPLAY)
    text = 'a "quote", a \\ back\\slash, é, \u2028, \t and \x01'.encode()
    extra = [
        [("ce_subject", text)],
        [("ce_sequence", b"00042"), ("ce_aaa", text), ("ce_zzz", b"last")],
        [("ce_replay", b"not-this-one"), ("ce_subject", b"s"), ("ce_rank", b"\xc3\xa9")],
        [("ce_sequence", text), ("ce_aa", b"1"), ("ce_replaz", b"2"), ("ce_b", b"3")],
    ]
    records = [
        _odd(record, headers=[*record.headers, *more][::step])
        for record in RECORDS[:40]
        for more in extra
        for step in (1, -1)
    ]
    fast = [readback.deliverable(r) for r in records]
    assert fast == [_slow(matcher, r) for r in records]
    assert sum(f is not None for f in fast) > len(records) // 2
