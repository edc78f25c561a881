"""The delivery reader's consumer fetches what is not paused, and only that is walked."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from connectors.reader import _fetch_unpaused, _wake_fetcher
from streams.config import Settings
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.topics import TopicSpec, create_topics

N = 20


async def _until_read(consumer: Any, tp: TopicPartition, seen: dict[int, int]) -> None:
    async with asyncio.timeout(30):
        while tp.partition not in seen:
            for got, records in (await consumer.getmany(timeout_ms=100)).items():
                seen[got.partition] = seen.get(got.partition, 0) + len(records)


async def test_paused_partitions_are_not_walked_and_a_resumed_one_is_read(
    settings: Settings,
) -> None:
    topic = f"{settings.kafka.topic_prefix}.fetching"
    await create_topics(settings.kafka, [TopicSpec(topic, N)])
    producer = make_producer(settings, "test-fetching")
    await producer.start()
    try:
        for p in range(N):
            await producer.send_and_wait(topic, b"x", key=b"k", partition=p)
    finally:
        await producer.stop()
    tps = [TopicPartition(topic, p) for p in range(N)]
    consumer = make_consumer(settings, "test-fetching", group=None, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        walk, walked = consumer._fetcher._get_actions_per_node, []

        def counted(assignment: Any) -> Any:  # what aiokafka's own walk is given
            walked.append(len(assignment.tps))
            return walk(assignment)

        consumer._fetcher._get_actions_per_node = counted
        _fetch_unpaused(consumer)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        consumer.pause(*tps[1:])
        seen: dict[int, int] = {}
        await _until_read(consumer, tps[0], seen)
        assert walked and max(walked) == 1  # before: every wake walked all 20
        consumer.resume(tps[5])
        _wake_fetcher(consumer)
        await _until_read(consumer, tps[5], seen)
        assert seen == {0: 1, 5: 1}  # nothing of a paused partition
    finally:
        await consumer.stop()


async def test_a_paused_partition_without_a_position_gets_one(settings: Settings) -> None:
    """The fetcher looks a position up for every partition, paused ones too (`position()`
    waits for it, and the reader asks it of partitions it paused at once)."""
    topic = f"{settings.kafka.topic_prefix}.positions"
    await create_topics(settings.kafka, [TopicSpec(topic, 2)])
    tps = [TopicPartition(topic, p) for p in range(2)]
    consumer = make_consumer(settings, "test-positions", group=None, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        _fetch_unpaused(consumer)
        consumer.assign(tps)
        consumer.pause(*tps)
        async with asyncio.timeout(20):  # without the lookup: waits for ever
            assert [await consumer.position(tp) for tp in tps] == [0, 0]
    finally:
        await consumer.stop()
