"""Kafka publishers are held to their publish grant, on a real broker (issue 15, item 4).

Each publisher writes into its own ingress topic with the publisher SDK; the worker judges
every record there against that publisher's grant. A record outside it lands in the invalid
topic with its code and reaches no events topic and no subscriber, KAFKA or HTTP."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import pytest
from clients import OWNER, subscriber

from streams.config import ClientConfig, Settings
from streams.contract.attributes import OVERLEDEN, VERHUISD
from streams.contract.envelope import CloudEvent
from streams.contract.headers import DETAIL_HEADER, ERROR_HEADER
from streams.contract.rules import dutch_today
from streams.contract.schemas import registry
from streams.demo.generators import BRP_SOURCE, EventFactory
from streams.health import Health
from streams.ingress.client import KafkaPublisher
from streams.kafka.topics import Topics, bus_topics, create_topics, subscription_topics
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription
from streams.routing.worker import Validator

pytestmark = pytest.mark.kafka

TODAY = dutch_today()
OTHER_SOURCE = "urn:nld:oin:00000001234567890000:systeem:ander-systeem"
GRANT = {"types": [VERHUISD], "sources": [BRP_SOURCE]}


def _publisher(id_: str) -> ClientConfig:
    return ClientConfig(id=id_, kafka_principal=f"User:{id_}-publisher", publish=GRANT)  # type: ignore[arg-type]


@pytest.fixture
async def publishing(settings: Settings) -> AsyncIterator[Settings]:
    """This test's settings with two Kafka publishers, `brp` and `brp-b` (moves from the BRP
    only), and every bus topic created, theirs included."""
    clients = (subscriber(OWNER), _publisher("brp"), _publisher("brp-b"))
    settings = settings.model_copy(update={"clients": clients})
    ids = [c.id for c in settings.kafka_publishers()]
    await create_topics(settings.kafka, bus_topics(settings.kafka, registry().types(), ids))
    yield settings


def _subscription(id_: str, protocol: str, types: list[str]) -> Subscription:
    sink = f"gemeentebus.deliver.{id_}" if protocol == "KAFKA" else f"https://{id_}.example/e"
    return Subscription.model_validate(
        {
            "id": id_,
            "sink": sink,
            "protocol": protocol,
            "types": types,
            "owner": OWNER,
            "purpose": "test",
        }
    )


async def _subscribe(settings: Settings, store: SubscriptionStore, sub: Subscription) -> None:
    await create_topics(settings.kafka, subscription_topics(settings.kafka, sub.id))
    await store.put(sub)


async def _publish(settings: Settings, client_id: str, events: Sequence[CloudEvent]) -> None:
    async with KafkaPublisher(settings.kafka, client_id=client_id) as bus:
        assert bus.topic == Topics(settings.kafka.topic_prefix).publisher_ingress(client_id)
        for event in events:  # one at a time: the order in which they were published
            await bus.publish(event)


def _id(record: Any) -> str:
    return bytes(dict(record.headers)["ce_id"]).decode()


def _json_id(record: Any) -> str:
    return str(json.loads(record.value)["id"])


async def test_records_outside_the_grant_are_dead_letters_and_reach_no_subscriber(
    publishing: Settings,
    store: SubscriptionStore,
    read_topic: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = publishing
    t = Topics(settings.kafka.topic_prefix)
    await _subscribe(settings, store, _subscription("alles", "KAFKA", [VERHUISD, OVERLEDEN]))
    await _subscribe(settings, store, _subscription("webhook", "HTTP", [VERHUISD, OVERLEDEN]))
    factory = EventFactory(21, today=TODAY)
    first = factory.verhuisd()
    death = factory.overleden()  # a valid event, of a type outside brp's grant
    elsewhere = replace(factory.verhuisd(), source=OTHER_SOURCE)  # a source outside it
    last = factory.verhuisd()
    granted = [first, last]

    worker = Validator(settings, store=store, health=Health())
    await worker.start()
    try:
        await _publish(settings, "brp", [first, death, elsewhere, last])
        dead = await read_topic(t.invalid, count=2)
        routed = await read_topic(t.events(VERHUISD), count=2)
        kafka_sub = await read_topic(t.deliver("alles"), count=2)
        http_sub = await read_topic(t.deliver("webhook"), count=2)
        deaths = await read_topic(t.events(OVERLEDEN), count=0, within=1.0)
    finally:
        await worker.stop()

    codes = {_id(r): bytes(dict(r.headers)[ERROR_HEADER]).decode() for r in dead}
    assert codes == {death.id: "type_not_granted", elsewhere.id: "source_not_granted"}
    for record in dead:
        detail = bytes(dict(record.headers)[DETAIL_HEADER]).decode()
        assert "client brp may not publish this" in detail
        assert death.data["bsn"] not in detail and OTHER_SOURCE not in detail
    # the dead letters are in: the worker judged those records, and routed nothing of them
    assert sorted(_id(r) for r in routed) == sorted(e.id for e in granted)
    assert deaths == []
    assert sorted(_json_id(r) for r in kafka_sub) == sorted(e.id for e in granted)
    assert sorted(_json_id(r) for r in http_sub) == sorted(e.id for e in granted)
    # the security log: who, what and how many, never the record
    warned = [
        r.getMessage() for r in caplog.records if "outside its publish grant" in r.getMessage()
    ]
    said = "Kafka publisher brp: records outside its publish grant dead-lettered"
    assert sorted(warned) == [f"{said}: 1 (source_not_granted)", f"{said}: 1 (type_not_granted)"]


async def test_two_publishers_keep_the_order_of_each_key(
    publishing: Settings, store: SubscriptionStore, read_topic: Any
) -> None:
    """Each publisher's records, per person, reach the subscriber in the order published,
    while the worker reads both topics (and the shared one) at once."""
    settings = publishing
    t = Topics(settings.kafka.topic_prefix)
    await _subscribe(settings, store, _subscription("alles", "KAFKA", [VERHUISD]))
    streams: dict[str, list[CloudEvent]] = {}
    for seed, client_id in ((31, "brp"), (32, "brp-b")):
        factory = EventFactory(seed, today=TODAY)
        factory.population = 8  # few persons, so each moves many times
        streams[client_id] = [factory.verhuisd() for _ in range(60)]
    published: dict[str, list[str]] = defaultdict(list)  # per person: ids in publish order
    for client_id, events in streams.items():
        for event in events:
            published[f"{client_id}/{event.data['bsn']}"].append(event.id)
    assert max(len(ids) for ids in published.values()) >= 5

    worker = Validator(settings, store=store, health=Health())
    await worker.start()
    try:
        await asyncio.gather(*(_publish(settings, c, events) for c, events in streams.items()))
        total = sum(len(events) for events in streams.values())
        delivered = await read_topic(t.deliver("alles"), count=total)
    finally:
        await worker.stop()

    received: dict[bytes, list[str]] = defaultdict(list)
    for record in sorted(delivered, key=lambda r: (r.partition, r.offset)):
        received[record.key].append(_json_id(record))
    # one key per person (its pseudonym), the persons of each publisher apart
    assert sorted(received.values()) == sorted(published.values())
