"""Issue 4's acceptance run: 10,000 mixed events, half over HTTP, half into the ingress topic."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter, defaultdict

import aiohttp
import pytest

from streams.config import ClientConfig, Settings
from streams.contract import codec
from streams.contract.attributes import partition_key
from streams.contract.envelope import CloudEvent
from streams.contract.headers import ERROR_HEADER
from streams.contract.record import KafkaRecord
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.demo.invalid import invalid_corpus
from streams.exceptions import InvalidEvent
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics
from streams.runner import running_bus

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TOTAL, INVALID, TOKEN = 10_000, 1_000, "e2e-publisher-token"


def _via_http(event: CloudEvent) -> bool:
    # One path per key, so per-key order is defined (two paths race each other).
    key = partition_key(event.type, event.data, b"split") if event.data else event.id.encode()
    return hashlib.sha256(key).digest()[0] % 2 == 0


def _json_body(event: CloudEvent) -> bytes:
    try:
        return json.dumps(codec.to_json(event)).encode()
    except InvalidEvent:  # structurally broken: send what a broken publisher would send
        raw = {
            "specversion": event.specversion,
            "id": event.id,
            "source": event.source,
            "type": event.type,
            "time": event.time,
            "dataschema": event.dataschema,
            "datacontenttype": "application/json",
            "data": dict(event.data),
        }
        return json.dumps(raw, default=str).encode()


async def _post_all(url: str, valid: list[CloudEvent], invalid: list[CloudEvent]) -> Counter[int]:
    statuses: Counter[int] = Counter()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for start in range(0, len(valid), 100):  # valid ones in batches: order kept per key
            batch = [codec.to_json(e) for e in valid[start : start + 100]]
            async with session.post(
                f"{url}/events", json=batch, headers={"Content-Type": codec.BATCH_CONTENT_TYPE}
            ) as r:
                statuses[r.status] += 1
        for event in invalid:
            async with session.post(
                f"{url}/events",
                data=_json_body(event),
                headers={"Content-Type": codec.STRUCTURED_CONTENT_TYPE},
            ) as r:
                statuses[r.status] += 1
    return statuses


async def _send_kafka(settings: Settings, records: list[KafkaRecord]) -> None:
    producer = make_producer(settings, "e2e")
    await producer.start()
    topic = Topics(settings.kafka.topic_prefix).ingress
    try:
        futures = [
            await producer.send(topic, r.value, key=r.key, headers=list(r.headers)) for r in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def test_ten_thousand_mixed_events_land_exactly(settings: Settings, read_topic) -> None:
    settings = settings.model_copy(
        update={
            "http": settings.http.model_copy(update={"port": 0}),
            "clients": (
                ClientConfig(
                    id="e2e",
                    token_sha256=hashlib.sha256(TOKEN.encode()).hexdigest(),
                    publish={"types": ["*"], "sources": ["*"]},
                ),
            ),  # type: ignore[arg-type]
        }
    )
    today = dutch_today()
    valid = EventFactory(5, today=today).mixed(TOTAL - INVALID)
    corpus = [e for _, e in invalid_corpus(5, today=today)]
    invalid = [corpus[i % len(corpus)] for i in range(INVALID)]  # every rule, many times

    http_valid = [e for e in valid if _via_http(e)]
    kafka_valid = [e for e in valid if not _via_http(e)]
    http_invalid, kafka_invalid_events = invalid[: INVALID // 2], invalid[INVALID // 2 :]
    kafka_records = [
        codec.to_kafka(e, key=partition_key(e.type, e.data, b"pub")) for e in kafka_valid
    ]
    for e in kafka_invalid_events:
        try:
            kafka_records.append(codec.to_kafka(e, key=None))
        except InvalidEvent:  # not expressible in Avro: what such a publisher would send
            kafka_records.append(KafkaRecord(key=None, headers=(), value=_json_body(e)))

    async with running_bus(settings) as bus:
        topics = Topics(settings.kafka.topic_prefix)
        statuses, _ = await asyncio.gather(
            _post_all(bus.url, http_valid, http_invalid), _send_kafka(settings, kafka_records)
        )
        by_type = Counter(e.type for e in valid)
        arrived = {
            t: await read_topic(topics.events(t), count=n, within=120) for t, n in by_type.items()
        }
        rejected = await read_topic(topics.invalid, count=INVALID, within=120)

    assert statuses == {202: -(-len(http_valid) // 100), 400: len(http_invalid)}
    ids = Counter(dict(r.headers)["ce_id"].decode() for rs in arrived.values() for r in rs)
    assert set(ids) == {e.id for e in valid}, "a valid event is missing"
    assert max(ids.values()) == 1, "duplicates in a fault-free run"
    assert len(rejected) == INVALID
    codes = Counter(dict(r.headers)[ERROR_HEADER].decode() for r in rejected)
    assert sum(codes.values()) + sum(ids.values()) == TOTAL  # the counts add up exactly
    via_http = [r for r in rejected if dict(r.headers).get("gemeentebus_via") == b"http"]
    assert len(via_http) == len(http_invalid)
    assert all(code for code in codes)

    position = {e.id: i for i, e in enumerate(valid)}
    per_key: dict[tuple[str, bytes], list[int]] = defaultdict(list)
    for rs in arrived.values():
        for r in sorted(rs, key=lambda r: (r.partition, r.offset)):
            per_key[(r.topic, r.key)].append(position[dict(r.headers)["ce_id"].decode()])
    assert all(seq == sorted(seq) for seq in per_key.values())
