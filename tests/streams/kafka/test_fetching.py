"""A consumer with `fetching.install`: its fetcher walks what is not paused, and only that."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.config import Settings
from streams.kafka import fetching
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.topics import TopicSpec, create_topics

N = 20


async def _until_read(consumer: Any, tp: TopicPartition, seen: dict[int, int]) -> None:
    async with asyncio.timeout(30):
        while tp.partition not in seen:
            for got, records in (await consumer.getmany(timeout_ms=100)).items():
                seen[got.partition] = seen.get(got.partition, 0) + len(records)


async def _one_each(settings: Settings, topic: str, partitions: int) -> None:
    await create_topics(settings.kafka, [TopicSpec(topic, partitions)])
    producer = make_producer(settings, "test-fetching")
    await producer.start()
    try:
        for p in range(partitions):
            await producer.send_and_wait(topic, b"x", key=b"k", partition=p)
    finally:
        await producer.stop()


def _counted(consumer: AIOKafkaConsumer) -> list[int]:
    """How many partitions aiokafka's own walk is given, wake by wake."""
    walk, walked = consumer._fetcher._get_actions_per_node, []

    def counted(assignment: Any) -> Any:
        walked.append(len(assignment.tps))
        return walk(assignment)

    consumer._fetcher._get_actions_per_node = counted
    return walked


async def test_paused_partitions_are_not_walked_and_a_resumed_one_is_read(
    settings: Settings,
) -> None:
    topic = f"{settings.kafka.topic_prefix}.fetching"
    await _one_each(settings, topic, N)
    tps = [TopicPartition(topic, p) for p in range(N)]
    consumer = make_consumer(settings, "test-fetching", group=None, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        walked = _counted(consumer)
        fetching.install(consumer)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        consumer.pause(*tps[1:])
        seen: dict[int, int] = {}
        await _until_read(consumer, tps[0], seen)
        assert walked and max(walked) == 1  # before: every wake walked all 20
        consumer.resume(tps[5])
        await _until_read(consumer, tps[5], seen)
        assert seen == {0: 1, 5: 1}  # nothing of a paused partition
        walked.clear()
        consumer.pause(tps[0])  # the kept list follows a pause after it was built
        async with asyncio.timeout(10):
            while not walked:  # the fetcher's next wake
                await consumer.getmany(timeout_ms=100)
        assert walked[-1] == 1  # 5 only
        consumer.resume(tps[7])
        await _until_read(consumer, tps[7], seen)
        assert walked and walked[-1] == 2  # 5 and 7
        assert seen == {0: 1, 5: 1, 7: 1}
    finally:
        await consumer.stop()


async def test_a_paused_partition_without_a_position_gets_one(settings: Settings) -> None:
    """The fetcher looks a position up for every partition, paused ones too (`position()`
    waits for it, and the delivery reader asks it of partitions it paused at once)."""
    topic = f"{settings.kafka.topic_prefix}.positions"
    await create_topics(settings.kafka, [TopicSpec(topic, 2)])
    tps = [TopicPartition(topic, p) for p in range(2)]
    consumer = make_consumer(settings, "test-positions", group=None, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        fetching.install(consumer)
        consumer.assign(tps)
        consumer.pause(*tps)
        async with asyncio.timeout(20):  # without the lookup: waits for ever
            assert [await consumer.position(tp) for tp in tps] == [0, 0]
    finally:
        await consumer.stop()


async def test_a_paused_partition_reset_after_the_list_was_kept_gets_its_position(
    settings: Settings,
) -> None:
    """A paused partition that had a position (not walked) and is reset (`seek_to_end`) is
    walked again until it has one: the kept list is not stale."""
    topic = f"{settings.kafka.topic_prefix}.resets"
    await _one_each(settings, topic, 2)
    tps = [TopicPartition(topic, p) for p in range(2)]
    consumer = make_consumer(settings, "test-resets", group=None, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        fetching.install(consumer)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        consumer.pause(tps[1])
        seen: dict[int, int] = {}
        await _until_read(consumer, tps[0], seen)  # the list is kept: tps[1] is not in it
        async with asyncio.timeout(20):  # without the reset noted: waits for ever
            await consumer.seek_to_end(tps[1])
            assert await consumer.position(tps[1]) == 1
    finally:
        await consumer.stop()
