"""The validating worker under bad luck, on a real broker: a poison record, a record the
broker refuses for its size, a bug while routing one event, a missing topic. Each is a dead
letter with a reason (or, when nothing can be done, a worker that stops and says why), and
every record around it is routed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from clients import OWNER

from streams.chaos.rawnames import RawName, send_raw_named
from streams.config import HttpSettings, Settings
from streams.contract.attributes import VERHUISD, ZAAK_GEMUTEERD
from streams.contract.envelope import CloudEvent
from streams.contract.headers import DETAIL_HEADER, ERROR_HEADER, TRUNCATED_HEADER
from streams.contract.record import KafkaRecord
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.exceptions import WorkerFailed
from streams.health import Health
from streams.ingress.gate import Gate
from streams.kafka.clients import make_admin, make_consumer, make_producer
from streams.kafka.topics import Topics, create_topics, subscription_topics
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription
from streams.routing.worker import TRUNCATED_BYTES, Validator

pytestmark = pytest.mark.kafka

KEY = b"test-pseudonym-key"  # the `settings` fixture's pseudonym key
TODAY = dutch_today()
OURS = (ERROR_HEADER, DETAIL_HEADER, TRUNCATED_HEADER)
# The headers a dead letter keeps as sent: context attributes that carry no personal data.
PLAIN = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_dataschema",
         "ce_datacontenttype", "content-type")  # fmt: skip


def _as_dead_letter(headers: Sequence[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    """Sent headers as a dead letter keeps them: names in order, the plain attributes and
    nulls as they were, a zaak's UUID subject too, every other value (the routing attributes
    here: they may carry a BSN in a bad record) redacted."""

    def kept(name: str, value: bytes | None) -> bool:
        return value is None or name in PLAIN or (name == "ce_subject" and len(value) == 36)

    return [(k, v if kept(k, v) else b"redacted") for k, v in headers]


Raw = tuple[bytes | None, list[tuple[str, bytes | None]], bytes | None]


def _raw(record: KafkaRecord) -> Raw:
    return record.key, list(record.headers), record.value


def _good(events: Sequence[CloudEvent]) -> list[Raw]:
    gate = Gate(Topics("unused"), KEY)
    return [_raw(gate.accept(e, today=TODAY).record) for e in events]


async def _publish(settings: Settings, records: Sequence[Raw]) -> None:
    """Write raw records into ingress partition 0, in this order (so each poison record has
    valid neighbours on both sides in one partition)."""
    producer = make_producer(settings, "publisher")
    await producer.start()
    try:
        ingress = Topics(settings.kafka.topic_prefix).ingress
        futures = [
            await producer.send(ingress, value, key, headers=headers, partition=0)
            for key, headers, value in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _read_all(settings: Settings, topics: Sequence[str], count: int) -> list[Any]:
    """At least `count` records of `topics` from the start, and whatever else is there."""
    consumer = make_consumer(settings, "test-read", *topics, fetch_max_wait_ms=500)
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(60):
            while len(records) < count:
                for part in (await consumer.getmany(timeout_ms=200)).values():
                    records += part
        for part in (await consumer.getmany(timeout_ms=500)).values():
            records += part
    except TimeoutError:
        pass  # the caller's assertions say what is missing
    finally:
        await consumer.stop()
    return records


def _id(record: Any) -> str:
    return bytes(dict(record.headers)["ce_id"]).decode()


def _subscription(id_: str, types: list[str], **extra: Any) -> Subscription:
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


async def _subscribe(settings: Settings, store: SubscriptionStore, sub: Subscription) -> None:
    await create_topics(settings.kafka, subscription_topics(settings.kafka, sub.id))
    await store.put(sub)


async def test_poison_records_are_dead_lettered_byte_for_byte_and_neighbours_routed(
    settings: Settings, bus_topics: Topics, store: SubscriptionStore
) -> None:
    valid = EventFactory(5, today=TODAY).mixed(8)
    good = _good(valid)
    key, headers, value = _good(EventFactory(6, today=TODAY).mixed(1))[0]
    assert value is not None

    def swap(name: str, new: bytes | None) -> list[tuple[str, bytes | None]]:
        return [(k, new if k == name else v) for k, v in headers]

    limit = settings.http.max_event_bytes
    poison: list[tuple[str, Raw]] = [
        ("null_header", (key, swap("ce_source", None), value)),
        ("header_encoding", (key, swap("ce_type", b"\xff\xfe\xfd"), value)),
        ("dataschema_mismatch", (key, swap("ce_type", dict(headers)["ce_type"] + b"\x01"), value)),
        ("avro_decode", (key, headers, value[: len(value) // 2])),
        ("too_large", (key, headers, value + b"\x00" * limit)),
        ("null_value", (key, headers, None)),
    ]
    stream: list[Raw] = [good[0]]
    for i, (_, record) in enumerate(poison):
        stream += [record, good[i + 1]]
    stream.append(good[-1])
    await _publish(settings, stream)

    worker = Validator(settings, store=store, health=Health())
    await worker.start()
    try:
        events = [bus_topics.events(t) for t in sorted({e.type for e in valid})]
        routed = await _read_all(settings, events, len(valid))
        dead = await _read_all(settings, [bus_topics.invalid], len(poison))
    finally:
        await worker.stop()

    assert sorted(_id(r) for r in routed) == sorted(e.id for e in valid)
    by_code = {bytes(dict(r.headers)[ERROR_HEADER]).decode(): r for r in dead}
    assert len(dead) == len(poison)
    assert sorted(by_code) == sorted(code for code, _ in poison)
    for code, (_, sent_headers, sent_value) in poison:
        record = by_code[code]
        # byte for byte: the value, every header in order (a null one still null)
        assert record.value == (b"" if sent_value is None else sent_value)  # no null value
        assert [(k, v) for k, v in record.headers if k not in OURS] == _as_dead_letter(sent_headers)
        assert dict(record.headers)[DETAIL_HEADER]
        assert record.key is None


async def test_an_event_the_broker_refuses_for_its_size_is_dead_lettered(
    settings: Settings, bus_topics: Topics, store: SubscriptionStore
) -> None:
    """A valid zaak event whose delivery JSON is over 1 MiB: control characters are six
    bytes each in JSON, one in Avro. The worker used to retry it forever."""
    settings = settings.model_copy(update={"http": HttpSettings(max_event_bytes=512 * 1024)})
    await _subscribe(settings, store, _subscription("zaken", [ZAAK_GEMUTEERD]))
    factory = EventFactory(8, today=TODAY)
    zaken = [factory.zaak_gemuteerd() for _ in range(5)]
    big = zaken[2].with_data({**zaken[2].data, "statusOmschrijving": "\x01" * 180_000})
    zaken[2] = big
    stream = _good(zaken)
    await _publish(settings, stream)

    worker = Validator(settings, store=store, health=Health())
    await worker.start()
    try:
        routed = await _read_all(settings, [bus_topics.events(ZAAK_GEMUTEERD)], 4)
        delivered = await _read_all(settings, [bus_topics.deliver("zaken")], 4)
        [dead] = await _read_all(settings, [bus_topics.invalid], 1)
    finally:
        await worker.stop()

    others = sorted(e.id for e in zaken if e is not big)
    assert sorted(_id(r) for r in routed) == others, "the big event is not half applied"
    assert sorted(_id(r) for r in delivered) == others
    assert dict(dead.headers)[ERROR_HEADER] == b"too_large"
    assert dead.value == stream[2][2]


async def test_a_dead_letter_too_large_for_the_invalid_topic_goes_out_truncated(
    settings: Settings, bus_topics: Topics, store: SubscriptionStore
) -> None:
    settings = settings.model_copy(update={"http": HttpSettings(max_event_bytes=512 * 1024)})
    admin = make_admin(settings.kafka)
    await admin.start()
    try:  # an invalid topic that takes less than the ingress topic
        limit = {"max.message.bytes": str(100_000)}
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, bus_topics.invalid, limit)]
        )
    finally:
        await admin.close()
    factory = EventFactory(9, today=TODAY)
    zaken = [factory.zaak_gemuteerd() for _ in range(3)]
    # an unknown dataschema: rejected, and its dead letter (200 KB) is over the invalid topic's
    big = _good([zaken[1]])[0]
    big_value = (big[2] or b"") + b"\x00" * 200_000
    stream = [*_good([zaken[0]]), (big[0], big[1], big_value), *_good([zaken[2]])]
    await _publish(settings, stream)

    worker = Validator(settings, store=store, health=Health())
    await worker.start()
    try:
        routed = await _read_all(settings, [bus_topics.events(ZAAK_GEMUTEERD)], 2)
        [dead] = await _read_all(settings, [bus_topics.invalid], 1)
    finally:
        await worker.stop()

    # the batch was sent again after the broker's refusal: duplicates, nothing lost
    assert sorted({_id(r) for r in routed}) == sorted([zaken[0].id, zaken[2].id])
    headers = dict(dead.headers)
    assert headers[ERROR_HEADER] == b"avro_trailing_bytes"
    assert headers[TRUNCATED_HEADER] == str(len(big_value)).encode()
    assert dead.value == big_value[:TRUNCATED_BYTES]


async def test_a_bug_while_routing_one_event_dead_letters_its_ingress_record(
    settings: Settings, bus_topics: Topics, store: SubscriptionStore
) -> None:
    """The event reaches nobody, so it must not stand in its events topic as accepted."""
    await _subscribe(settings, store, _subscription("alles", [VERHUISD]))
    factory = EventFactory(10, today=TODAY)
    moves = [factory.verhuisd(soort="IMMIGRATIE") for _ in range(5)]  # five new persons
    target = moves[2].data["bsn"]
    assert [m.data["bsn"] for m in moves].count(target) == 1
    sub = store.get("alles")
    assert sub is not None

    def failing(data: dict[str, Any]) -> dict[str, Any]:
        if data["bsn"] == target:  # a bug that shows with this one event only
            raise KeyError("999993653")
        return dict(data)

    sub._projections[VERHUISD] = failing  # the router's compiled projection for the type
    stream = _good(moves)
    await _publish(settings, stream)

    worker = Validator(settings, store=store, health=Health())
    await worker.start()
    try:
        routed = await _read_all(settings, [bus_topics.events(VERHUISD)], 4)
        delivered = await _read_all(settings, [bus_topics.deliver("alles")], 4)
        [dead] = await _read_all(settings, [bus_topics.invalid], 1)
    finally:
        await worker.stop()

    others = sorted(e.id for e in moves if e is not moves[2])
    assert sorted(_id(r) for r in routed) == others
    assert sorted(_id(r) for r in delivered) == others
    assert dict(dead.headers)[ERROR_HEADER] == b"internal_error"
    assert b"999993653" not in dict(dead.headers)[DETAIL_HEADER]
    assert dead.value == stream[2][2]


async def test_a_missing_topic_stops_the_worker_visibly_and_skips_nothing(
    settings: Settings, bus_topics: Topics, store: SubscriptionStore
) -> None:
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"request_timeout_s": 3.0})}
    )
    await store.put(_subscription("zonder-topic", [VERHUISD]))
    admin = make_admin(settings.kafka)
    await admin.start()
    try:  # its delivery topic is gone (deleted by hand, or lost with the broker's data)
        await admin.delete_topics([bus_topics.deliver("zonder-topic")])
    finally:
        await admin.close()
    moves = [EventFactory(12, today=TODAY).verhuisd() for _ in range(3)]
    await _publish(settings, _good(moves))

    health = Health()
    worker = Validator(settings, store=store, health=health)
    await worker.start()
    try:
        async with asyncio.timeout(60):
            with pytest.raises(WorkerFailed, match="zonder-topic does not exist"):
                await worker.wait()
        ready, problems = health.ready()
        assert not ready
        assert any("does not exist" in p for p in problems["worker"])
    finally:
        await worker.stop()

    # nothing was acknowledged: with the topic there, a new worker routes all of it
    await create_topics(settings.kafka, subscription_topics(settings.kafka, "zonder-topic"))
    worker = Validator(settings, store=store)
    await worker.start()
    try:
        delivered = await _read_all(settings, [bus_topics.deliver("zonder-topic")], 3)
    finally:
        await worker.stop()
    assert sorted(_id(r) for r in delivered) == sorted(e.id for e in moves)


async def test_a_header_name_that_is_not_utf8_is_dead_lettered_and_neighbours_routed(
    settings: Settings, bus_topics: Topics, store: SubscriptionStore
) -> None:
    """aiokafka's record parser raises UnicodeDecodeError on such a batch at every fetch:
    Faust's fetcher died of it and the worker read nothing more, neighbours included."""
    valid = EventFactory(13, today=TODAY).mixed(4)
    good = _good(valid)
    key, headers, value = _good(EventFactory(14, today=TODAY).mixed(1))[0]
    odd = [*headers, (RawName(b"\xff\xfename"), b"v")]
    ingress = Topics(settings.kafka.topic_prefix).ingress
    producer = make_producer(settings, "raw-publisher", enable_idempotence=False)
    await producer.start()
    try:  # in this order into one partition, each in a batch of its own
        for k, h, v in good[:2]:
            await (await producer.send(ingress, v, key=k, headers=h, partition=0))
        await (await send_raw_named(producer, ingress, 0, key, value, odd))
        for k, h, v in good[2:]:
            await (await producer.send(ingress, v, key=k, headers=h, partition=0))
    finally:
        await producer.stop()
    health = Health()
    worker = Validator(settings, store=store, health=health)
    await worker.start()
    try:
        events = [bus_topics.events(t) for t in sorted({e.type for e in valid})]
        routed = await _read_all(settings, events, len(valid))
        dead = await _read_all(settings, [bus_topics.invalid], 1)
        assert worker.failure is None
        assert health.ready()[0]
    finally:
        await asyncio.wait_for(worker.stop(), 30)
    assert sorted(_id(r) for r in routed) == sorted(e.id for e in valid)
    assert len(dead) == 1
    (letter,) = dead
    assert dict(letter.headers)[ERROR_HEADER] == b"not_utf8_header_name"
    assert letter.value == value  # byte for byte, the name as the repr of its bytes
    assert [(k, v) for k, v in letter.headers if k not in OURS] == [
        *_as_dead_letter(headers),
        ("b'\\xff\\xfename'", b"redacted"),
    ]
