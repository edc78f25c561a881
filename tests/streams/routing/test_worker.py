"""The validating stream against a real broker: what arrives where, in which order."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from streams.config import Settings
from streams.contract import codec
from streams.contract.attributes import partition_key
from streams.contract.envelope import CloudEvent
from streams.contract.headers import DETAIL_HEADER, ERROR_HEADER
from streams.contract.record import KafkaRecord
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.demo.invalid import invalid_corpus
from streams.exceptions import InvalidEvent
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics
from streams.routing.worker import Validator

pytestmark = pytest.mark.kafka

TODAY = dutch_today()


def _header(record: object, name: str) -> str | None:
    for key, value in record.headers:  # type: ignore[attr-defined]
        if key == name:
            return bytes(value).decode()
    return None


_unknown_type = {
    "ce_type": b"nl.brp.persoon-geboren",
    "ce_dataschema": b"urn:gemeentebus:schema:nl.brp.persoon-geboren:1",
}
# The Kafka binding finds some broken rules before validation does, under its own code.
KAFKA_CODE = {"id_format": "invalid_attribute"}


def ingress_records(
    n_valid: int, seed: int
) -> tuple[list[CloudEvent], list[tuple[str, KafkaRecord]]]:
    """`n_valid` valid events, and invalid records covering every rule that a Kafka
    publisher can break (plus bytes that are no event at all)."""
    valid = EventFactory(seed, today=TODAY).mixed(n_valid)
    invalid: list[tuple[str, KafkaRecord]] = []
    for code, event in invalid_corpus(seed, today=TODAY):
        try:
            record = codec.to_kafka(event, key=b"publisher-chosen-key")
            invalid.append((KAFKA_CODE.get(code, code), record))
        except InvalidEvent:
            continue  # not expressible in Avro: only reachable over HTTP
    good = codec.to_kafka(valid[0], key=b"k")
    headers = dict(good.headers)
    invalid += [
        ("avro_decode", KafkaRecord(key=None, headers=good.headers, value=b"\x01garbage")),
        (
            "avro_trailing_bytes",
            KafkaRecord(key=None, headers=good.headers, value=good.value + b"\x00"),
        ),
        (
            "missing_header",
            KafkaRecord(
                key=None,
                headers=tuple((k, v) for k, v in good.headers if k != "ce_id"),
                value=good.value,
            ),
        ),
        (
            "unknown_dataschema",
            KafkaRecord(
                key=None,
                headers=tuple((k, _unknown_type.get(k, v)) for k, v in good.headers),
                value=good.value,
            ),
        ),
        (
            "header_encoding",
            KafkaRecord(
                key=None,
                headers=tuple((k, b"\xff\xfe" if k == "ce_source" else v) for k, v in good.headers),
                value=good.value,
            ),
        ),
        ("missing_header", KafkaRecord(key=None, headers=(), value=b"{}")),
    ]
    assert headers  # the good record had headers to mutate
    return valid, invalid


async def _publish(settings: Settings, records: list[KafkaRecord]) -> None:
    producer = make_producer(settings, "publisher")
    await producer.start()
    try:
        futures = [
            await producer.send(
                Topics(settings.kafka.topic_prefix).ingress,
                r.value,
                key=r.key,
                headers=list(r.headers),
            )
            for r in records
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()


async def test_every_record_lands_once_in_order(
    settings: Settings, bus_topics: Topics, read_topic
) -> None:
    valid, invalid = ingress_records(4500, seed=7)
    # 10% invalid: the corpus repeated, so every rule is broken many times.
    bad = [invalid[i % len(invalid)] for i in range(500)]
    stream: list[tuple[str | None, KafkaRecord]] = [
        (None, codec.to_kafka(e, key=partition_key(e.type, e.data, b"publisher-secret")))
        for e in valid
    ]
    for item in bad:
        stream.insert(random.Random(1).randrange(len(stream)), item)
    # Person events keyed by the publisher: same BSN → same key, so ingress keeps their order.
    await _publish(settings, [r for _, r in stream])

    validator = Validator(settings)
    await validator.start()
    try:
        by_type = Counter(e.type for e in valid)
        arrived = {t: await read_topic(bus_topics.events(t), count=n) for t, n in by_type.items()}
        rejected = await read_topic(bus_topics.invalid, count=len(bad))
    finally:
        await validator.stop()

    ids = [_header(r, "ce_id") for records in arrived.values() for r in records]
    assert len(ids) == len(valid), "valid events missing or duplicated"
    assert sorted(ids) == sorted(e.id for e in valid)
    assert len(rejected) == len(bad)
    assert Counter(_header(r, ERROR_HEADER) for r in rejected) == Counter(code for code, _ in bad)
    assert all(r.key is None for r in rejected)
    # Rejected input is kept byte for byte, and the detail names no personal data.
    assert sorted(r.value for r in rejected) == sorted(rec.value for _, rec in bad)
    for r in rejected:
        detail = _header(r, DETAIL_HEADER) or ""
        assert detail and not any(ch.isdigit() for ch in detail.split(":")[0])

    # Per key (pseudonym of the BSN, or zaak UUID) in each events topic: publication order.
    position = {e.id: i for i, e in enumerate(valid)}
    per_key: dict[tuple[str, bytes], list[int]] = defaultdict(list)
    for records in arrived.values():
        for r in sorted(records, key=lambda r: (r.partition, r.offset)):
            per_key[(r.topic, r.key)].append(position[_header(r, "ce_id")])
    assert all(seq == sorted(seq) for seq in per_key.values())
    # No BSN in any key or header.
    bsns = {e.data["bsn"] for e in valid if "bsn" in e.data}
    for records in arrived.values():
        for r in records:
            assert r.key.decode() not in bsns
            assert not any(v.decode(errors="ignore") in bsns for _, v in r.headers)


async def test_a_backlog_is_judged_in_full_batches(
    settings: Settings, bus_topics: Topics, read_topic
) -> None:
    # Batches of a few records, each paying a subscription sync and a produce round trip,
    # were what bound the worker on a backlog: it now takes what the stream holds.
    valid, _ = ingress_records(2_000, seed=11)
    await _publish(
        settings,
        [codec.to_kafka(e, key=partition_key(e.type, e.data, b"publisher-secret")) for e in valid],
    )
    validator = Validator(settings)
    await validator.start()
    try:
        by_type = Counter(e.type for e in valid)
        for event_type, count in by_type.items():
            assert len(await read_topic(bus_topics.events(event_type), count=count)) == count
    finally:
        await validator.stop()
    assert validator.processed == len(valid)
    assert validator.batches <= len(valid) // 50, f"{validator.batches} batches"
