"""Dead letters on a real broker: listing them without their data, and redriving them once,
in order, into the subscription's deliver topic."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from streams.config import Settings
from streams.contract.headers import ATTEMPTS_HEADER, DETAIL_HEADER, ERROR_HEADER, REDRIVEN_HEADER
from streams.delivery.dlq import dead_letter_headers, list_dead_letters, redrive
from streams.delivery.log import decode_attempt
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics, create_topics, subscription_topics
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

pytestmark = pytest.mark.kafka

SOURCE = "urn:nld:oin:00000001823288444000:systeem:BRP-component"
VERHUISD = "nl.brp.persoon-verhuisd"
ZAAK = "nl.overheid.zaken.zaak-gemuteerd"

Reader = Callable[..., Awaitable[list[ConsumerRecord]]]


def record(i: int, key: str, event_type: str) -> tuple[bytes, list[tuple[str, bytes]], bytes]:
    event = {
        "specversion": "1.0",
        "id": f"e{i}",
        "source": SOURCE,
        "type": event_type,
        "time": "2025-03-01T10:00:00Z",
        "datacontenttype": "application/json",
        "data": {"seq": i, "geheim": "data the listing must not show"},
    }
    headers = [
        ("content-type", b"application/cloudevents+json; charset=utf-8"),
        ("ce_id", f"e{i}".encode()),
        ("ce_source", SOURCE.encode()),
        ("ce_type", event_type.encode()),
        ("ce_time", b"2025-03-01T10:00:00Z"),
    ]
    return key.encode(), headers, json.dumps(event).encode()


async def write_dead_letters(settings: Settings, sub_id: str, first: int, count: int) -> None:
    producer = make_producer(settings, "test-dlq")
    await producer.start()
    try:
        for i in range(first, first + count):
            key, headers, value = record(i, f"{i % 4:064x}", VERHUISD if i % 2 else ZAAK)
            dead = dead_letter_headers(
                tuple(headers), error="http_500", detail="the subscriber answered HTTP 500",
                attempts=3,
            )  # fmt: skip
            await producer.send(
                Topics(settings.kafka.topic_prefix).dlq(sub_id), value, key=key,
                headers=list(dead),
            )  # fmt: skip
        await producer.flush()
    finally:
        await producer.stop()


async def test_list_and_redrive(settings: Settings, bus_topics: Topics, read_topic: Reader) -> None:
    store = SubscriptionStore(settings)
    await store.start()
    try:
        await store.put(
            Subscription.model_validate(
                {
                    "id": "dlq-test",
                    "sink": "http://127.0.0.1:9/hook",
                    "protocol": "HTTP",
                    "types": [VERHUISD, ZAAK],
                    "owner": "test",
                    "purpose": "verhuizingen verwerken",
                    "callbackCheck": False,
                }
            )
        )
    finally:
        await store.stop()
    await write_dead_letters(settings, "dlq-test", 0, 40)

    letters = await list_dead_letters(settings, "dlq-test")
    assert sorted(int(d.event_id[1:]) for d in letters) == list(range(40))
    assert {(d.error, d.attempts, d.redriven) for d in letters} == {("http_500", 3, False)}
    assert all(d.source == SOURCE and d.time is not None for d in letters)
    assert "geheim" not in repr(letters)

    seen: list[tuple[int, int]] = []
    assert await redrive(settings, "dlq-test", progress=lambda d, t: seen.append((d, t))) == 40
    assert seen[0] == (0, 40) and seen[-1] == (40, 40)

    delivered = await read_topic(bus_topics.deliver("dlq-test"), count=40)
    assert len(delivered) == 40
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for r in delivered:
        headers = dict(r.headers)
        assert headers[REDRIVEN_HEADER] == b"1"
        assert ERROR_HEADER not in headers and DETAIL_HEADER not in headers
        assert ATTEMPTS_HEADER not in headers
        assert headers["ce_source"] == SOURCE.encode()
        per_key[r.key].append(json.loads(r.value)["data"]["seq"])
    for seqs in per_key.values():
        assert seqs == sorted(seqs)  # in order, per key

    # a second redrive takes only what arrived since
    assert await redrive(settings, "dlq-test", purpose="verhuizingen verwerken") == 0
    await write_dead_letters(settings, "dlq-test", 40, 5)
    assert await redrive(settings, "dlq-test") == 5
    assert [d.redriven for d in await list_dead_letters(settings, "dlq-test")] == [True] * 45

    log = [decode_attempt(r.value) for r in await read_topic(bus_topics.deliveries, count=45)]
    redriven = [a for a in log if a.outcome == "redriven"]
    assert sorted(int(a.event_id[1:]) for a in redriven) == list(range(45))
    by_id: dict[str, Any] = {a.event_id: a for a in redriven}
    assert by_id["e1"].pseudonym == f"{1:064x}"  # person event: the key is the pseudonym
    assert by_id["e2"].pseudonym is None  # zaak event: no person
    assert {a.purpose for a in redriven} == {"verhuizingen verwerken"}


async def test_redrive_of_an_unknown_subscription_says_so(
    settings: Settings, bus_topics: Topics
) -> None:
    with pytest.raises(ValueError, match="no subscription"):
        await redrive(settings, "nobody")


async def test_a_poison_dead_letter_with_a_null_header_is_listed_and_redriven(
    settings: Settings, bus_topics: Topics, read_topic: Reader
) -> None:
    key, headers, value = record(0, f"{0:064x}", VERHUISD)
    poison = [*headers, ("x-odd", None)]  # as the courier dead-letters it: byte for byte
    dead = dead_letter_headers(tuple(poison), error="null_header", detail="x", attempts=0)
    await create_topics(settings.kafka, subscription_topics(settings.kafka, "odd"))
    producer = make_producer(settings, "test-dlq")
    await producer.start()
    try:
        await producer.send_and_wait(bus_topics.dlq("odd"), value, key=key, headers=list(dead))
    finally:
        await producer.stop()

    letters = await list_dead_letters(settings, "odd")
    assert [(d.event_id, d.error, d.attempts) for d in letters] == [("e0", "null_header", 0)]
    assert await redrive(settings, "odd", purpose="verhuizingen verwerken") == 1
    (again,) = await read_topic(bus_topics.deliver("odd"), count=1)
    assert ("x-odd", None) in list(again.headers)  # still the same record
    assert again.value == value
