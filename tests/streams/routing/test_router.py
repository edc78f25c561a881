"""Routing against a real broker, in the municipal setup: who receives what, and how fast.

Amsterdam and Utrecht follow moves into and out of their gemeente and deaths of residents,
each seeing only its `fields`; the BRP receives every person event whole; a zaaksysteem the
zaak events of its bronorganisatie; a pension fund three persons it follows (volgindicaties).
Events go into ingress as a publisher writes them; the stream worker validates and routes
them in one pass.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from clients import OWNER

from streams.config import Settings
from streams.contract import codec
from streams.contract.attributes import (
    OVERLEDEN,
    PERSON_TYPES,
    VERHUISD,
    ZAAK_GEMUTEERD,
    partition_key,
    pseudonym,
)
from streams.contract.envelope import CloudEvent
from streams.contract.headers import ERROR_HEADER
from streams.contract.record import KafkaRecord
from streams.contract.rules import dutch_today
from streams.demo.generators import BRP_SOURCE, EventFactory
from streams.exceptions import RoutingFailed
from streams.ingress.gate import Accepted, Gate
from streams.kafka.clients import make_producer, send_all
from streams.kafka.topics import Topics
from streams.routing.router import CONTENT_TYPE, UNDECODABLE, Router
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription
from streams.routing.worker import Validator

pytestmark = pytest.mark.kafka

KEY = b"test-pseudonym-key"  # the `settings` fixture's pseudonym key
TODAY = dutch_today()
DEADLINE_S = 60.0

AMSTERDAM_FIELDS = [
    "bsn", "soort", "nieuwAdres.postcode", "nieuwAdres.gemeentecode", "vorigAdres.gemeentecode",
    "datumAanvangAdreshouding", "datumOverlijden", "gemeenteVanInschrijving",
]  # fmt: skip
UTRECHT_FIELDS = [
    "bsn", "soort", "vorigAdres", "nieuwAdres.gemeentecode", "datumOverlijden",
    "gemeenteVanInschrijving",
]  # fmt: skip
PENSION_FIELDS = ["bsn", "soort", "datumOverlijden"]


def subscription(id_: str, types: list[str], **extra: Any) -> Subscription:
    return Subscription.model_validate(
        {
            "id": id_,
            "sink": f"gemeentebus.deliver.{id_}",
            "protocol": "KAFKA",
            "types": types,
            "owner": OWNER,
            "purpose": "test",
            **extra,
        }
    )


def gemeente(code: str, fields: list[str]) -> Subscription:
    moves = {"any": [{"exact": {"gemeentevan": code}}, {"exact": {"gemeentenaar": code}}]}
    residents = {"exact": {"gemeente": code}}
    filters = [{"any": [moves, residents]}]
    return subscription(f"gemeente-{code}", [VERHUISD, OVERLEDEN], filters=filters, fields=fields)


# -- the oracle: who should receive an event, and which of its fields ---------------------


def _dutch_code(adres: dict[str, Any]) -> str | None:
    return None if adres.get("land") else adres.get("gemeentecode")


def in_gemeente(event: CloudEvent, code: str) -> bool:
    if event.type == VERHUISD:
        return code in (
            _dutch_code(event.data["vorigAdres"]),
            _dutch_code(event.data["nieuwAdres"]),
        )
    return event.type == OVERLEDEN and event.data["gemeenteVanInschrijving"] == code


def keep(data: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """The JSON `data` with only the dotted paths in `fields` (independent of the bus's code)."""
    out: dict[str, Any] = {}
    for path in fields:
        head, _, rest = path.partition(".")
        if head not in data:
            continue
        if not rest or data[head] is None:
            out[head] = data[head]
        else:
            out.setdefault(head, {}).update(keep(data[head], [rest]))
    return out


# -- harness --------------------------------------------------------------------------------


def moves_between(factory: EventFactory, van: str, naar: str, n: int) -> Iterator[CloudEvent]:
    """`n` intergemeentelijke moves from `van` to `naar`, by new persons, in the past."""
    at = datetime.now().astimezone() - timedelta(days=2)
    for i in range(n):
        data = {
            "bsn": factory.bsn(),
            "soort": "INTERGEMEENTELIJK",
            "vorigAdres": factory.adres(van),
            "nieuwAdres": factory.adres(naar),
            "datumAanvangAdreshouding": TODAY - timedelta(days=3),
        }
        yield CloudEvent(
            id=factory.uuid(),
            source=BRP_SOURCE,
            type=VERHUISD,
            time=at + timedelta(seconds=i),
            dataschema=f"urn:gemeentebus:schema:{VERHUISD}:1",
            data=data,
        )


class Publisher:
    """Writes events into ingress in order, keyed by person as publishers do; returns what
    the bus will accept of them (to compare with)."""

    def __init__(self, settings: Settings, topics: Topics) -> None:
        self.gate = Gate(topics, KEY)
        self.ingress = topics.ingress
        self.producer = make_producer(settings, "test-publisher")

    async def publish(self, events: list[CloudEvent]) -> list[Accepted]:
        accepted = [self.gate.accept(e, today=TODAY) for e in events]
        records = [
            (self.ingress, codec.to_kafka(e, key=partition_key(e.type, e.data, b"publisher")))
            for e in events
        ]
        await send_all(self.producer, records)
        return accepted


@pytest.fixture
async def publisher(settings: Settings, bus_topics: Topics) -> AsyncIterator[Publisher]:
    p = Publisher(settings, bus_topics)
    await p.producer.start()
    yield p
    await p.producer.stop()


@pytest.fixture
def api_store(store: SubscriptionStore) -> SubscriptionStore:
    """The subscription set as the HTTP API's process holds it."""
    return store


@pytest.fixture
async def router(settings: Settings, api_store: SubscriptionStore) -> AsyncIterator[Validator]:
    """A stream worker with its own store: another process than the API's."""
    worker = Validator(settings)
    yield worker
    await worker.stop()


def _headers(record: Any) -> dict[str, str]:
    return {k: bytes(v).decode() for k, v in record.headers}


async def test_each_subscriber_receives_its_events_and_fields_only(
    settings: Settings, bus_topics: Topics, api_store: SubscriptionStore, router: Validator,
    publisher: Publisher, read_topic: Any,
) -> None:  # fmt: skip
    factory = EventFactory(11, today=TODAY)
    events = factory.mixed(900)
    persons = Counter(e.data["bsn"] for e in events if e.type in PERSON_TYPES)
    followed = [bsn for bsn, _ in persons.most_common(3)]
    rsin = Counter(e.data["bronorganisatie"] for e in events if e.type == ZAAK_GEMUTEERD)
    bron = rsin.most_common(1)[0][0]
    the_move = next(moves_between(factory, "0363", "0344", 1))
    events.insert(len(events) // 2, the_move)

    amsterdam = gemeente("0363", AMSTERDAM_FIELDS)
    utrecht = gemeente("0344", UTRECHT_FIELDS)
    brp = subscription("brp", [VERHUISD, OVERLEDEN])
    zaaksysteem = subscription(
        "zaaksysteem", [ZAAK_GEMUTEERD], filters=[{"exact": {"bronorganisatie": bron}}]
    )
    pension = subscription(
        "pensioenfonds",
        [VERHUISD, OVERLEDEN],
        fields=PENSION_FIELDS,
        volgindicatiesOnly=True,
        volgindicaties={pseudonym(bsn, KEY): None for bsn in followed},
    )
    subs = [amsterdam, utrecht, brp, zaaksysteem, pension]
    for sub in subs:
        await api_store.put(sub)
    await router.start()  # its own store: reads the set from the topic before routing
    accepted = await publisher.publish(events)

    wants = {
        amsterdam.id: lambda e: in_gemeente(e, "0363"),
        utrecht.id: lambda e: in_gemeente(e, "0344"),
        brp.id: lambda e: e.type in PERSON_TYPES,
        zaaksysteem.id: lambda e: e.type == ZAAK_GEMUTEERD and e.data["bronorganisatie"] == bron,
        pension.id: lambda e: e.type in PERSON_TYPES and e.data["bsn"] in followed,
    }
    fields = {
        amsterdam.id: AMSTERDAM_FIELDS,
        utrecht.id: UTRECHT_FIELDS,
        pension.id: PENSION_FIELDS,
    }
    # stripped fields are absent from the bytes too, not just from the parsed JSON
    forbidden = {
        amsterdam.id: [b'"straat"', b'"huisnummer"', b'"woonplaats"', b'"wijzeVanAangifte"'],
        utrecht.id: [b'"datumAanvangAdreshouding"', b'"datumAangifte"', b'"wijzeVanAangifte"'],
        pension.id: [b"Adres", b'"gemeenteVanInschrijving"'],
    }
    expected = {s: [a for a in accepted if want(a.event)] for s, want in wants.items()}
    assert all(len(e) >= 3 for e in expected.values()), "the data set exercises every subscriber"
    received = {
        s: await read_topic(bus_topics.deliver(s), count=len(e)) for s, e in expected.items()
    }

    holders = {
        s for s, rs in received.items() if any(_headers(r)["ce_id"] == the_move.id for r in rs)
    }
    assert holders == {amsterdam.id, utrecht.id, brp.id}, "the move 0363 → 0344"

    for s, records in received.items():
        assert sorted(_headers(r)["ce_id"] for r in records) == sorted(
            a.event.id for a in expected[s]
        ), f"{s}: missing, extra or duplicated events"
        by_id = {a.event.id: a for a in expected[s]}
        for r in records:
            headers = _headers(r)
            source = by_id[headers["ce_id"]]
            assert r.key == source.record.key  # the same key as the events topic
            assert headers["content-type"] == CONTENT_TYPE
            assert set(headers) == {"content-type", "ce_id", "ce_source", "ce_type", "ce_time"}
            body = json.loads(r.value.decode("utf-8"))
            whole = codec.to_json(source.event)
            want = keep(whole["data"], fields[s]) if s in fields else whole["data"]
            assert body == {**whole, "data": want}, s
            for stripped in forbidden.get(s, ()):
                assert stripped not in r.value, f"{s} sees {stripped!r}"
            straat = source.event.data.get("vorigAdres", {}).get("straat")
            if s == amsterdam.id and straat:
                assert straat not in r.value.decode()  # stripped: not even in the bytes

    # per key and event type: the order of the events topic (a type is one topic)
    position = {a.event.id: i for i, a in enumerate(accepted)}
    for s, records in received.items():
        per_key: dict[tuple[str, bytes], list[int]] = defaultdict(list)
        for r in records:
            h = _headers(r)
            per_key[(h["ce_type"], r.key)].append(position[h["ce_id"]])
        assert all(seq == sorted(seq) for seq in per_key.values()), f"{s}: order per key"


async def test_a_new_subscription_receives_what_is_published_after_put(
    settings: Settings, bus_topics: Topics, api_store: SubscriptionStore, router: Validator,
    publisher: Publisher, read_topic: Any,
) -> None:  # fmt: skip
    await router.start()
    factory = EventFactory(5, today=TODAY)
    seen_at: dict[str, float] = {}  # when the router's store applied a subscription
    router.store.changes.append(lambda id_, _: seen_at.setdefault(id_, time.time()))
    seen_ms: list[float] = []
    routed_ms: list[float] = []
    for code in ("0599", "0518", "0014", "0193", "0772"):
        sub = gemeente(code, ["soort", "nieuwAdres.gemeentecode"])
        started = time.time()
        await api_store.put(sub)
        returned = time.time()
        # published right after `put` returned: the router must already route it
        move = next(moves_between(factory, code, "0363", 1))
        await publisher.publish([move])
        records = await read_topic(bus_topics.deliver(sub.id), count=1)
        assert [_headers(r)["ce_id"] for r in records] == [move.id], sub.id
        seen_ms.append((seen_at[sub.id] - returned) * 1000)
        # the delivery record's timestamp is when the router produced it
        routed_ms.append(records[0].timestamp - returned * 1000)
        print(
            f"{sub.id}: put took {(returned - started) * 1000:.0f} ms; router's store had it "
            f"{seen_ms[-1]:+.0f} ms after put returned; the event published after put was "
            f"routed {routed_ms[-1]:.0f} ms after put returned"
        )
    print(
        f"propagation put → router's store: max {max(seen_ms):+.0f} ms; "
        f"put → event routed: max {max(routed_ms):.0f} ms"
    )


async def test_an_undecodable_record_is_dead_lettered(settings: Settings) -> None:
    store = SubscriptionStore(settings, name="unstarted")  # no subscriptions needed
    router = Router(settings, store=store)
    await store.stop()  # never started: closed so nothing warns
    good = Gate(Topics(settings.kafka.topic_prefix), KEY).accept(
        EventFactory(3, today=TODAY).mixed(1)[0], today=TODAY
    )
    broken = KafkaRecord(key=b"k", headers=good.record.headers, value=b"\x01garbage")
    [(topic, dead)] = router.route(broken, today=TODAY)
    assert topic == Topics(settings.kafka.topic_prefix).invalid
    assert (dict(dead.headers)[ERROR_HEADER], dead.value) == (UNDECODABLE.encode(), broken.value)
    assert dead.key is None  # the key is not kept: it could be anything


async def test_a_failure_while_routing_raises_for_the_caller_to_decide(settings: Settings) -> None:
    """No catch-all that dead-letters the *events-topic* record: an event delivered to nobody
    must not count as accepted (the worker dead-letters its ingress record, the API 500s)."""
    store = SubscriptionStore(settings, name="unstarted")
    router = Router(settings, store=store)
    await store.stop()
    accepted = Gate(Topics(settings.kafka.topic_prefix), KEY).accept(
        EventFactory(3, today=TODAY).mixed(1)[0], today=TODAY
    )

    def broken_match(*_: Any) -> list[Subscription]:
        raise RuntimeError("999993653 in a message")

    store.index.match = broken_match  # type: ignore[method-assign]
    with pytest.raises(RoutingFailed, match="RuntimeError") as raised:
        router.fan_out(accepted.event, accepted.record, today=TODAY)
    assert "999993653" not in str(raised.value)
