"""`Producer.send_batched` on a real broker: every record once, per key in order, in the
partition `send` would choose, and a record larger than a batch still goes."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from streams.config import Settings
from streams.contract.record import KafkaRecord
from streams.kafka.clients import make_producer
from streams.kafka.partitioner import murmur2
from streams.kafka.topics import Topics, TopicSpec, create_topics


async def test_batches_keep_every_record_its_partition_and_order(
    settings: Settings, topics: Topics, read_topic
) -> None:
    topic = topics.deliver("batched")
    await create_topics(settings.kafka, [TopicSpec(topic, 3)])
    keys = [f"person-{i % 7}".encode() for i in range(1_500)]
    records = [
        KafkaRecord(key=key, headers=(("n", str(i).encode()),), value=b"x" * 200)
        for i, key in enumerate(keys)
    ]
    big = KafkaRecord(key=b"person-1", headers=(("n", b"big"),), value=b"y" * 40_000)
    producer = make_producer(settings, "test-batched", max_batch_size=16 * 1024)
    await producer.start()
    try:
        futures = await producer.send_batched(topic, records[:700])
        futures += await producer.send_batched(topic, [big, *records[700:]])
        await asyncio.gather(*futures)
        assert await producer.send_batched(topic, []) == []
    finally:
        await producer.stop()
    assert len(futures) < 100  # whole batches, not a future per record

    arrived = await read_topic(topic, count=1_501)
    assert len(arrived) == 1_501
    # the order sent: the first 700, the big one, the rest
    sent = {str(i).encode(): i if i < 700 else i + 1 for i in range(1_500)} | {b"big": 700}
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for record in sorted(arrived, key=lambda r: (r.partition, r.offset)):
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % 3
        per_key[record.key].append(sent[dict(record.headers)["n"]])
    assert all(seq == sorted(seq) for seq in per_key.values())
    assert sum(map(len, per_key.values())) == 1_501
