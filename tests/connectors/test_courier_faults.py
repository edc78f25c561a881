"""The courier under faults, on a real broker with real receivers on 127.0.0.1: poison records,
unwritable delivery-log and DLQ topics, one key that keeps failing, a bug while sending, a
410 whose retirement cannot be written at first, and stopping within a deadline."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import MessageSizeTooLargeError, TopicAuthorizationFailedError
from aiokafka.structs import ConsumerRecord
from test_dispatcher import (
    Receiver,
    Request,
    Writer,
    fast,
    free_port,
    in_key_order,
    pseudonym,
    record,
    subscription,
    until,
)

from connectors.dispatcher import Dispatcher
from connectors.holding import LANE_CAP, MAX_PENDING
from connectors.webhook import WebhookSender
from streams.chaos.rawnames import RawName, send_raw_named
from streams.config import DeliverySettings, Settings
from streams.contract.headers import ATTEMPTS_HEADER, ERROR_HEADER, ORIGIN_HEADER, TRUNCATED_HEADER
from streams.delivery.log import decode_attempt
from streams.exceptions import KafkaUnavailable
from streams.health import Health
from streams.kafka.clients import make_admin, make_consumer, make_producer
from streams.kafka.partitioner import murmur2
from streams.kafka.topics import Topics
from streams.routing.store import SubscriptionStore

pytestmark = pytest.mark.kafka

Reader = Callable[..., Awaitable[list[ConsumerRecord]]]


@pytest.fixture
async def writer(settings: Settings) -> AsyncIterator[Writer]:
    out = Writer(settings)
    await out.producer.start()
    yield out
    await out.producer.stop()


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        await receiver.stop()


async def start_dispatcher(
    settings: Settings,
    store: SubscriptionStore,
    delivery: DeliverySettings,
    health: Health | None = None,
) -> Dispatcher:
    dispatcher = Dispatcher(
        settings.model_copy(update={"delivery": delivery}), store, health=health
    )
    await dispatcher.start()
    return dispatcher


async def set_topic_config(settings: Settings, topic: str, configs: dict[str, str]) -> None:
    admin = make_admin(settings.kafka)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()


PROBE = b"probe"


async def refuse_writes(settings: Settings, topic: str, max_bytes: int = 100) -> None:
    """Make `topic` refuse records over `max_bytes`, and wait until the broker does."""
    await set_topic_config(settings, topic, {"max.message.bytes": str(max_bytes)})
    producer = make_producer(settings, "test-probe")
    await producer.start()
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    await producer.send_and_wait(topic, b"p" * (max_bytes + 200), key=PROBE)
                except MessageSizeTooLargeError:
                    return
                await asyncio.sleep(0.1)
    finally:
        await producer.stop()


async def committed(settings: Settings, sub_id: str) -> int:
    """The sum of the offsets the delivery group committed in a subscription's topic."""
    admin = make_admin(settings.kafka)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(f"{settings.kafka.topic_prefix}.delivery")
    finally:
        await admin.close()
    topic = f"{settings.kafka.topic_prefix}.deliver.{sub_id}"
    print("COMMITTED", {tp.partition: o.offset for tp, o in offsets.items() if tp.topic == topic})
    return sum(max(0, o.offset) for tp, o in offsets.items() if tp.topic == topic)


async def until_async(condition: Callable[[], Awaitable[bool]], within: float = 45.0) -> None:
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110 - polls the broker
            await asyncio.sleep(0.2)


def seq_of(r: Request) -> int:
    seq: int = r.event["data"]["seq"]
    return seq


def partition_of(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# -- poison records ----------------------------------------------------------------------


async def test_poison_records_are_dead_lettered_byte_for_byte_and_the_rest_delivered(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receivers: list[Receiver],
    read_topic: Reader,
) -> None:
    receiver = await Receiver().start()
    receivers.append(receiver)
    await store.put(subscription("poisoned", receiver.url))
    health = Health()
    dispatcher = await start_dispatcher(settings, store, big_settings(fast()), health)
    topic = writer.topics.deliver("poisoned")
    key = pseudonym(1)
    base_headers, _ = record(100, key)
    poisons: list[tuple[str, list[Any], bytes | None]] = [
        ("null_header", [*base_headers, ("x-odd", None)], record(100, key)[1]),
        ("not_utf8", [*base_headers[:1], ("ce_id", b"\xff\xfe")], record(101, key)[1]),
        ("not_json", base_headers, b'{"id": "e102", truncated'),
        ("not_utf8", base_headers, b"\xc3\x28 not utf-8"),
        ("too_large", base_headers, json.dumps({"id": "e104", "pad": "x" * 5000}).encode()),
        ("null_value", base_headers, None),
        ("not_cloudevent", base_headers, b"[1, 2, 3]"),
        # a batch aiokafka could not parse at all: the courier read nothing more of it
        (
            "not_utf8_header_name",
            [*base_headers, (RawName(b"\xffx-odd"), b"1")],
            record(105, key)[1],
        ),
    ]
    raw = make_producer(settings, "raw-writer", enable_idempotence=False)
    await raw.start()
    try:
        seq = 0
        for _, headers, value in poisons:  # each poison between two good records of its key
            for _ in range(2):
                good_headers, good_value = record(seq, key)
                await writer.producer.send(topic, good_value, key=key, headers=good_headers)
                seq += 1
            if any(isinstance(name, RawName) for name, _ in headers):
                await writer.producer.flush()  # in its key's turn, on its key's partition
                partition = partition_of(key, settings.kafka.partitions)
                await (await send_raw_named(raw, topic, partition, key, value, headers))
                continue
            await writer.producer.send(topic, value, key=key, headers=headers)
        await writer.write("poisoned", [(i, pseudonym(2)) for i in range(200, 220)])
        await until(lambda: len(receiver.accepted) >= seq + 20)
        part = health.part("delivery", "courier poisoned")
        assert part.broken_reason is None
        dead = await read_topic(
            Topics(settings.kafka.topic_prefix).dlq("poisoned"), count=len(poisons)
        )
        await until_async(lambda: committed_all(settings, "poisoned", seq + len(poisons) + 20))
    finally:
        await raw.stop()
        await dispatcher.stop()
    assert "courier poisoned" not in health.role("delivery").parts  # dropped at stop
    got = [seq_of(r) for r in receiver.accepted]
    assert sorted(got) == [*range(seq), *range(200, 220)]  # every good record, once
    assert in_key_order(receiver.accepted, lambda s: key if s < 200 else pseudonym(2))
    assert len(dead) == len(poisons)
    for (code, headers, value), letter in zip(poisons, dead, strict=True):  # in order
        assert letter.value == value  # byte for byte
        assert letter.key == key
        original = [
            (repr(k.raw) if isinstance(k, RawName) else k, None if v is None else bytes(v))
            for k, v in headers
        ]
        assert list(letter.headers)[: len(original)] == original  # a null header stays null
        found = dict(letter.headers)
        assert found[ERROR_HEADER] == code.encode()
        assert found[ATTEMPTS_HEADER] == b"0"
    log = [
        decode_attempt(r.value)
        for r in await read_topic(writer.topics.deliveries, count=seq + 20 + len(poisons))
    ]
    assert sorted(a.error or "" for a in log if a.outcome == "dead_lettered") == sorted(
        code for code, _, _ in poisons
    )


async def committed_all(settings: Settings, sub_id: str, count: int) -> bool:
    return await committed(settings, sub_id) >= count


def big_settings(delivery: DeliverySettings) -> DeliverySettings:
    return delivery.model_copy(update={"max_body_bytes": 4096})


# -- unwritable delivery log and DLQ -----------------------------------------------------


async def test_a_delivery_log_that_refuses_writes_holds_the_commit_then_recovers(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receivers: list[Receiver],
    read_topic: Reader,
) -> None:
    receiver = await Receiver().start()
    receivers.append(receiver)
    await store.put(subscription("logless", receiver.url))
    health = Health()
    dispatcher = await start_dispatcher(settings, store, fast(), health)
    deliveries = writer.topics.deliveries
    part = health.part("delivery", "courier logless")
    try:
        await refuse_writes(settings, deliveries)
        await writer.write("logless", [(i, pseudonym(i % 5)) for i in range(20)])
        await until(lambda: len(receiver.accepted) >= 20)
        await until(lambda: part.broken_reason is not None)
        assert deliveries in (part.broken_reason or "")
        assert await committed(settings, "logless") == 0  # delivered, not logged: not finished

        await set_topic_config(settings, deliveries, {"max.message.bytes": "1048588"})
        await until_async(lambda: committed_all(settings, "logless", 20))
        await until(lambda: part.broken_reason is None)
        assert dispatcher.pending == 0
    finally:
        await dispatcher.stop()
    log = [
        decode_attempt(r.value)
        for r in await read_topic(deliveries, count=20)
        if r.key != PROBE  # a probe that landed before the broker refused
    ]
    assert sorted(int(a.event_id[1:]) for a in log if a.outcome == "delivered") == list(range(20))
    assert len(receiver.accepted) == 20  # not delivered again


async def test_a_permanent_kafka_error_while_reading_is_retried_and_visible(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receivers: list[Receiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver = await Receiver().start()
    receivers.append(receiver)
    await store.put(subscription("refused", receiver.url))
    health = Health()
    dispatcher = await start_dispatcher(settings, store, fast(), health)
    part = health.part("delivery", "reader")
    original = AIOKafkaConsumer.getmany
    delivery_group = f"{settings.kafka.topic_prefix}.delivery"
    refusing = True

    async def getmany(self: AIOKafkaConsumer, *args: Any, **kwargs: Any) -> Any:
        if refusing and self._group_id == delivery_group:  # the delivery reader's only
            raise TopicAuthorizationFailedError("not authorised (injected)")
        return await original(self, *args, **kwargs)

    try:
        monkeypatch.setattr(AIOKafkaConsumer, "getmany", getmany)
        await until(lambda: part.broken_reason is not None, within=20)
        assert "TopicAuthorizationFailedError" in (part.broken_reason or "")
        assert not health.ready()[0]
        refusing = False  # the grant comes back: the courier goes on where it was
        await writer.write("refused", [(i, pseudonym(i % 3)) for i in range(5)])
        await until(lambda: len(receiver.accepted) >= 5)
        await until(lambda: part.broken_reason is None)
    finally:
        await dispatcher.stop()
    assert sorted(seq_of(r) for r in receiver.accepted) == list(range(5))


async def test_records_that_waited_unread_behind_the_pending_cap_have_used_their_window(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receivers: list[Receiver],
    read_topic: Reader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def down(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
        return 503, {}

    monkeypatch.setattr("connectors.holding.MAX_PENDING", 20)  # a courier holds 20 at most

    def small_fetches(*args: Any, **kwargs: Any) -> AIOKafkaConsumer:
        return make_consumer(*args, **{**kwargs, "max_poll_records": 5})

    monkeypatch.setattr("connectors.reader.make_consumer", small_fetches)  # reads by 5
    receiver = await Receiver(down).start()
    receivers.append(receiver)
    await store.put(subscription("backlog", receiver.url))
    window = fast(retry_window_s=1.5, initial_backoff_s=0.05, max_backoff_s=0.3)
    dispatcher = await start_dispatcher(settings, store, window)
    try:
        await writer.write("backlog", [(i, pseudonym(i % 10)) for i in range(400)])
        dead = await read_topic(writer.topics.dlq("backlog"), count=400, within=120)
    finally:
        await dispatcher.stop()
    attempts = [int(dict(r.headers)[ATTEMPTS_HEADER]) for r in dead]
    assert len(attempts) == 400
    # the first records read retried for the whole window; the ones read later had waited
    # that long in Kafka already: one attempt each (a window per fetch would retry ~all)
    assert sum(1 for a in attempts if a > 1) <= 2 * 20
    by_key: dict[bytes, list[int]] = {}
    for r in dead:
        by_key.setdefault(r.key, []).append(json.loads(r.value)["data"]["seq"])
    assert all(seqs == sorted(seqs) for seqs in by_key.values())  # per key in order


async def test_a_dead_letter_too_large_for_the_dlq_is_written_without_its_value(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receivers: list[Receiver],
    read_topic: Reader,
) -> None:
    async def failing(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
        return 500, {}

    receiver = await Receiver(failing).start()
    receivers.append(receiver)
    await store.put(subscription("bigdead", receiver.url))
    dlq = writer.topics.dlq("bigdead")
    await refuse_writes(settings, dlq, 3000)
    dispatcher = await start_dispatcher(settings, store, fast(retry_window_s=0.5))
    key = pseudonym(4)
    try:
        headers, small = record(0, key)
        big = json.dumps({**json.loads(small), "id": "e1", "pad": "y" * 4000}).encode()
        topic = writer.topics.deliver("bigdead")
        await writer.producer.send(topic, small, key=key, headers=headers)
        await writer.producer.send(topic, big, key=key, headers=headers)
        await writer.producer.flush()
        await until_async(lambda: committed_all(settings, "bigdead", 2))  # both dead-lettered
        dead = await read_topic(dlq, count=2)
    finally:
        await dispatcher.stop()
    dead = [d for d in dead if d.key != PROBE]
    assert [d.value for d in dead] == [small, None]
    cut = dict(dead[1].headers)
    assert cut[ERROR_HEADER] == b"http_500"
    assert b"4" in cut[TRUNCATED_HEADER] and cut[ORIGIN_HEADER].startswith(topic.encode())
    assert TRUNCATED_HEADER not in dict(dead[0].headers)


# -- one key that keeps failing ----------------------------------------------------------


async def test_one_failing_key_holds_back_only_itself(
    settings: Settings, store: SubscriptionStore, writer: Writer, receivers: list[Receiver]
) -> None:
    bad = pseudonym(0)
    partitions = settings.kafka.partitions
    # every other key in the failing key's partition: the worst case for the old pending cap
    same = [k for k in (pseudonym(n) for n in range(1, 2000)) if partition_of(k, partitions)
            == partition_of(bad, partitions)][:100]  # fmt: skip

    async def one_key_down(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
        return (503, {}) if event["data"]["seq"] % 51 == 0 else (200, {})

    receiver = await Receiver(one_key_down).start()
    receivers.append(receiver)
    await store.put(subscription("onekey", receiver.url))
    dispatcher = await start_dispatcher(settings, store, fast(max_backoff_s=0.2))

    def key_of(seq: int) -> bytes:
        return bad if seq % 51 == 0 else same[seq % len(same)]

    total = 5100
    others = [s for s in range(total) if s % 51]
    held: list[int] = []
    try:
        await writer.write("onekey", [(s, key_of(s)) for s in range(total)])

        def all_others() -> bool:
            held.append(dispatcher.pending)
            return len({seq_of(r) for r in receiver.accepted}) >= len(others)

        await until(all_others, within=120)
        await until(lambda: dispatcher.pending <= 100)  # only the failing key's records held
    finally:
        await dispatcher.stop(deadline_s=1.0)
    assert sorted({seq_of(r) for r in receiver.accepted}) == others
    assert in_key_order(receiver.accepted, key_of)
    print(f"\nrecords held at most {max(held)}, while {total} were delivered around one key")
    assert max(held) <= MAX_PENDING + 500  # the cap plus one fetch


async def test_a_flooding_failing_key_holds_back_only_itself(
    settings: Settings, store: SubscriptionStore, writer: Writer, receivers: list[Receiver]
) -> None:
    """2,000 records of one failing key, then 1,000 of other keys of its partition and of
    others: the others are delivered while it fails, no partition pauses, memory stays at
    about one lane's cap; once the subscriber mends, the key's backlog follows in order."""
    bad = pseudonym(0)
    partitions = settings.kafka.partitions
    keys = [pseudonym(n) for n in range(1, 500)]
    same = [k for k in keys if partition_of(k, partitions) == partition_of(bad, partitions)]
    elsewhere = [k for k in keys if partition_of(k, partitions) != partition_of(bad, partitions)]
    others = [*same[:20], *elsewhere[:20]]
    failing = True

    async def one_key_down(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
        return (503, {}) if failing and event["data"]["seq"] < 2000 else (200, {})

    receiver = await Receiver(one_key_down).start()
    receivers.append(receiver)
    await store.put(subscription("flood", receiver.url))
    dispatcher = await start_dispatcher(settings, store, fast(max_backoff_s=0.2))
    held: list[int] = []
    paused: set[int] = set()
    try:
        await writer.write("flood", [(s, bad) for s in range(2000)])
        await writer.write("flood", [(2000 + s, others[s % len(others)]) for s in range(1000)])
        courier = dispatcher._couriers["flood"]

        def others_done() -> bool:
            held.append(dispatcher.pending)
            paused.update(courier.paused)
            return len([r for r in receiver.accepted if seq_of(r) >= 2000]) >= 1000

        await until(others_done, within=60)
        failing = False  # the subscriber mends: the key's backlog follows, in order
        await until(lambda: len({seq_of(r) for r in receiver.accepted}) >= 3000, within=90)
        await until_async(lambda: committed_all(settings, "flood", 3000))
    finally:
        await dispatcher.stop(deadline_s=1.0)
    print(f"\nrecords held at most {max(held)} with one key flooding")
    assert paused == set()  # the failing key paused no partition, not even its own
    assert max(held) <= LANE_CAP + 500 + 1000  # its lane, one fetch, the others
    delivered = [seq_of(r) for r in receiver.accepted if seq_of(r) < 2000]
    assert list(dict.fromkeys(delivered)) == list(range(2000))
    assert in_key_order(receiver.accepted, lambda seq: bad if seq < 2000 else others[seq % 40])


async def test_records_spilled_behind_a_failing_key_survive_a_restart(
    settings: Settings, store: SubscriptionStore, writer: Writer, receivers: list[Receiver]
) -> None:
    """The commit stays below what a full lane left in Kafka: a delivery process stopped
    while one key floods, and a new one started, delivers the key's whole backlog."""
    bad = pseudonym(0)
    partitions = settings.kafka.partitions
    same = [k for k in (pseudonym(n) for n in range(1, 500))
            if partition_of(k, partitions) == partition_of(bad, partitions)][:10]  # fmt: skip
    failing = True

    async def one_key_down(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
        return (503, {}) if failing and event["data"]["seq"] < 1500 else (200, {})

    receiver = await Receiver(one_key_down).start()
    receivers.append(receiver)
    await store.put(subscription("respill", receiver.url))
    dispatcher = await start_dispatcher(settings, store, fast(max_backoff_s=0.2))
    try:
        await writer.write("respill", [(s, bad) for s in range(1500)])
        await writer.write("respill", [(1500 + s, same[s % 10]) for s in range(200)])
        await until(lambda: len([r for r in receiver.accepted if seq_of(r) >= 1500]) >= 200)
        assert dispatcher._couriers["respill"]._holding.spilled > 0
    finally:
        await dispatcher.stop(deadline_s=5.0)
    failing = False
    dispatcher = await start_dispatcher(settings, store, fast(max_backoff_s=0.2))
    try:
        await until(lambda: len({seq_of(r) for r in receiver.accepted}) >= 1700, within=90)
    finally:
        await dispatcher.stop(deadline_s=5.0)
    delivered = [seq_of(r) for r in receiver.accepted if seq_of(r) < 1500]
    assert delivered == list(range(1500))  # all of the key, in order, once: none was sent


# -- a bug while sending -----------------------------------------------------------------


async def test_an_internal_error_on_one_record_is_dead_lettered_after_the_window(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receivers: list[Receiver],
    read_topic: Reader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = WebhookSender.send

    async def buggy_for_e1(self: WebhookSender, payload: bytes, **kwargs: Any) -> int:
        if kwargs["event_id"] == "e1":
            raise RuntimeError("a bug, not an answer of the subscriber")
        return await original(self, payload, **kwargs)

    monkeypatch.setattr(WebhookSender, "send", buggy_for_e1)
    receiver = await Receiver().start()
    receivers.append(receiver)
    await store.put(subscription("bug", receiver.url))
    window = fast(retry_window_s=1.5, initial_backoff_s=0.1, max_backoff_s=0.3)
    dispatcher = await start_dispatcher(settings, store, window)
    try:
        await writer.write("bug", [(i, pseudonym(0)) for i in range(3)])
        await until(lambda: len(receiver.accepted) == 2, within=20)
        dead = await read_topic(writer.topics.dlq("bug"), count=1)
    finally:
        await dispatcher.stop()
    assert [seq_of(r) for r in receiver.accepted] == [0, 2]
    assert len(dead) == 1 and json.loads(dead[0].value)["id"] == "e1"
    headers = dict(dead[0].headers)
    assert headers[ERROR_HEADER] == b"internal_error"
    assert int(headers[ATTEMPTS_HEADER]) >= 2  # retried within the window first
    assert dispatcher.counts["bug"]["retry"] >= 1


# -- 410 with a failing retire write -----------------------------------------------------


async def test_a_410_whose_retirement_fails_at_first_is_retired_and_never_restarted(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receivers: list[Receiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def gone(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
        return 410, {}

    leaving, staying = await Receiver(gone).start(), await Receiver().start()
    receivers.extend([leaving, staying])
    await store.put(subscription("leaving", leaving.url))
    await store.put(subscription("staying", staying.url))
    retire = store.retire
    refused: list[str] = []

    async def flaky_retire(sub_id: str, version: str) -> None:
        if sub_id == "leaving" and len(refused) < 3:
            refused.append(sub_id)
            # meanwhile another change makes the dispatcher reconcile: still no restart
            steady = subscription("staying", staying.url)
            await store.put(steady.model_copy(update={"purpose": f"purpose {len(refused)}"}))
            raise KafkaUnavailable("the broker did not answer (injected)")
        await retire(sub_id, version)

    monkeypatch.setattr(store, "retire", flaky_retire)
    health = Health()
    dispatcher = await start_dispatcher(settings, store, fast(), health)
    try:
        await writer.write("leaving", [(i, pseudonym(1)) for i in range(5)])
        await until(lambda: len(refused) >= 1)
        assert "leaving" not in dispatcher.running
        async with asyncio.timeout(30):
            retired = await store.wait_for("leaving", lambda s: s is not None and not s.active)
        assert retired is not None and retired.status == "retired"
        assert len(refused) == 3
        await writer.write("leaving", [(i, pseudonym(1)) for i in range(5, 10)])
        await writer.write("staying", [(i, pseudonym(1)) for i in range(5)])
        await until(lambda: len(staying.accepted) == 5)
        assert "leaving" not in dispatcher.running
        assert "courier leaving" not in health.role("delivery").parts
        assert "retiring leaving" not in health.role("delivery").parts  # retired: mended
    finally:
        await dispatcher.stop()
    assert len(leaving.requests) == 1  # one 410, nothing after it


async def test_a_410_whose_retirement_is_refused_for_good_stays_stopped_until_edited(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receivers: list[Receiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def gone(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
        return 410, {}

    leaving, staying = await Receiver(gone).start(), await Receiver().start()
    receivers.extend([leaving, staying])
    await store.put(subscription("leaving", leaving.url))
    await store.put(subscription("staying", staying.url))

    async def refusing_retire(sub_id: str, version: str) -> None:
        raise TopicAuthorizationFailedError("no ACL to write the retirements")

    monkeypatch.setattr(store, "retire", refusing_retire)
    health = Health()
    dispatcher = await start_dispatcher(settings, store, fast(), health)
    try:
        await writer.write("leaving", [(i, pseudonym(1)) for i in range(5)])
        await until(lambda: len(leaving.requests) == 1)
        await until(lambda: "leaving" not in dispatcher.running, within=10)  # no dead courier
        part = health.part("delivery", "retiring leaving")
        await until(lambda: "for good" in (part.broken_reason or ""))
        steady = subscription("staying", staying.url)
        await store.put(steady.model_copy(update={"purpose": "another purpose"}))
        await writer.write("staying", [(0, pseudonym(1))])
        await until(lambda: len(staying.accepted) == 1)
        assert "leaving" not in dispatcher.running  # not restarted by an unrelated change
        assert len(leaving.requests) == 1

        edited = subscription("leaving", leaving.url)  # an operator's edit: delivery resumes
        await store.put(edited.model_copy(update={"purpose": "edited"}))
        await until(lambda: len(leaving.requests) == 2)  # and the subscriber says 410 again
    finally:
        await dispatcher.stop()


# -- stopping within the deadline --------------------------------------------------------


async def test_stop_keeps_its_deadline_with_hanging_and_closed_sinks(
    settings: Settings, store: SubscriptionStore, writer: Writer, receivers: list[Receiver]
) -> None:
    released = asyncio.Event()

    async def hang(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
        await released.wait()
        return 200, {}

    hanging = await Receiver(hang).start()
    receivers.append(hanging)
    await store.put(subscription("hanging", hanging.url))
    await store.put(subscription("hanging-too", hanging.url))
    await store.put(subscription("closed", f"http://127.0.0.1:{free_port()}/hook"))
    dispatcher = await start_dispatcher(settings, store, fast(read_timeout_s=60.0))
    try:
        for sub_id in ("hanging", "hanging-too", "closed"):
            await writer.write(sub_id, [(i, pseudonym(i)) for i in range(10)])
        await until(lambda: dispatcher.pending >= 30)  # read, and stuck in their requests
        # one subscription removed: its courier stops in the background, stuck in requests
        current = store.get("hanging-too")
        assert current is not None
        await store.put(current.retired())
        await until(lambda: "hanging-too" not in dispatcher.running)
    finally:
        started = time.monotonic()
        await dispatcher.stop(deadline_s=1.0)
        took = time.monotonic() - started
        released.set()
    print(f"\nstop with hanging sinks took {took:.2f}s (deadline 1 s)")
    assert took < 1.5


async def test_stop_keeps_its_deadline_with_writes_the_broker_refuses(
    settings: Settings, store: SubscriptionStore, writer: Writer, receivers: list[Receiver]
) -> None:
    receiver = await Receiver().start()
    receivers.append(receiver)
    await store.put(subscription("unlogged", receiver.url))
    dispatcher = await start_dispatcher(settings, store, fast())
    try:
        await refuse_writes(settings, writer.topics.deliveries)
        await writer.write("unlogged", [(i, pseudonym(i)) for i in range(10)])
        await until(lambda: len(receiver.accepted) == 10)  # delivered; their log writes retry
    finally:
        started = time.monotonic()
        await dispatcher.stop(deadline_s=1.0)
        took = time.monotonic() - started
    print(f"\nstop with refused writes took {took:.2f}s (deadline 1 s)")
    assert took < 1.5
    assert await committed(settings, "unlogged") == 0  # unfinished: delivered again later
