"""The foundation: a real broker answers, and a Faust agent moves records between topics."""

from __future__ import annotations

import pytest
from kafka_reading import consume

from streams.config import Settings
from streams.kafka.clients import make_app, make_producer
from streams.kafka.topics import TopicSpec, create_topics

pytestmark = pytest.mark.kafka


async def test_aiokafka_round_trip(settings: Settings) -> None:
    topic = f"{settings.kafka.topic_prefix}.roundtrip"
    created = await create_topics(settings.kafka, [TopicSpec(topic, 3)])
    assert created == [topic]
    assert await create_topics(settings.kafka, [TopicSpec(topic, 3)]) == []  # idempotent

    producer = make_producer(settings, "test")
    await producer.start()
    try:
        sent = [
            await producer.send_and_wait(topic, f"v{i}".encode(), key=f"k{i % 5}".encode())
            for i in range(50)
        ]
    finally:
        await producer.stop()
    assert all(meta.offset >= 0 for meta in sent)

    records = await consume(settings, topic, 50)
    assert sorted(r.value for r in records) == sorted(f"v{i}".encode() for i in range(50))
    for key in (f"k{i}".encode() for i in range(5)):
        values = [int(r.value[1:]) for r in records if r.key == key]
        assert values == sorted(values), "per-key order lost"


async def test_faust_agent_moves_records_and_awaits_delivery(settings: Settings) -> None:
    source_name = f"{settings.kafka.topic_prefix}.source"
    sink_name = f"{settings.kafka.topic_prefix}.sink"
    await create_topics(settings.kafka, [TopicSpec(source_name, 3), TopicSpec(sink_name, 3)])

    app = make_app(settings, "copier")
    source = app.topic(source_name, key_serializer="raw", value_serializer="raw")
    producer = make_producer(settings, "copier")
    copied: list[int] = []

    @app.agent(source, concurrency=1)
    async def copy(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            meta = await producer.send_and_wait(sink_name, event.value.upper(), key=event.key)
            copied.append(meta.offset)

    await producer.start()
    await app.start()
    try:
        writer = make_producer(settings, "writer")
        await writer.start()
        try:
            for i in range(20):
                await writer.send_and_wait(source_name, f"msg-{i}".encode(), key=b"same-key")
        finally:
            await writer.stop()
        records = await consume(settings, sink_name, 20)
    finally:
        await app.stop()
        await producer.stop()

    assert [r.value for r in records] == [f"MSG-{i}".encode() for i in range(20)]
    assert len(copied) == 20
