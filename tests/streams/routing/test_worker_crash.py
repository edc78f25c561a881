"""At-least-once, proven: SIGKILL the validating worker mid-stream, restart it, lose nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter, defaultdict

import pytest
from aiokafka import TopicPartition
from kafka_reading import transport_env
from keys import PSEUDONYM_KEY, SECRETS_KEY

from streams.config import Settings
from streams.contract import codec
from streams.contract.attributes import partition_key
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TOTAL = 20_000


def _worker(settings: Settings) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **transport_env(settings),
        "GEMEENTEBUS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "GEMEENTEBUS_KAFKA__PARTITIONS": str(settings.kafka.partitions),
        "GEMEENTEBUS_KAFKA__REPLICATION_FACTOR": "1",  # one broker, said explicitly
        "GEMEENTEBUS_KAFKA__MIN_INSYNC_REPLICAS": "1",
        "GEMEENTEBUS_KAFKA__ALLOW_SINGLE_REPLICA": "true",
        "GEMEENTEBUS_KAFKA__ALLOW_PLAINTEXT": "true",  # the test broker: loopback
        "GEMEENTEBUS_HTTP__PORT": "0",  # every process serves /health and /ready
        "GEMEENTEBUS_SECURITY__PSEUDONYM_KEY": PSEUDONYM_KEY,
        "GEMEENTEBUS_SECURITY__SECRETS_KEY": SECRETS_KEY,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "run", "--role", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _events_in_topics(settings: Settings, topics: list[str]) -> int:
    consumer = make_consumer(settings, "test-offsets")
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics for p in range(settings.kafka.partitions)]
        return sum((await consumer.end_offsets(parts)).values())
    finally:
        await consumer.stop()


async def _wait_for(settings: Settings, topics: list[str], at_least: int, within: float) -> int:
    async with asyncio.timeout(within):
        while (count := await _events_in_topics(settings, topics)) < at_least:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # polling the broker: there is no event to wait on
    return count


async def _collect(settings: Settings, topics: list[str], want: set[str], within: float) -> list:
    """Read the topics until every wanted id arrived (or time is up), then a little more."""
    consumer = make_consumer(settings, "test-read", *topics, fetch_max_wait_ms=500)
    await consumer.start()
    records: list = []
    seen: set[str] = set()
    try:
        async with asyncio.timeout(within):
            while not want <= seen:
                for part in (await consumer.getmany(timeout_ms=500, max_records=10000)).values():
                    records += part
                    seen.update(dict(r.headers)["ce_id"].decode() for r in part)
    except TimeoutError:
        pass  # the assertions say what is missing
    finally:
        await consumer.stop()
    return records


async def test_sigkill_mid_stream_loses_no_event(settings: Settings, bus_topics: Topics) -> None:
    events = EventFactory(11, today=dutch_today()).mixed(TOTAL)
    producer = make_producer(settings, "publisher")
    await producer.start()
    try:
        futures = []
        for e in events:
            r = codec.to_kafka(e, key=partition_key(e.type, e.data, b"publisher"))
            futures.append(
                await producer.send(bus_topics.ingress, r.value, key=r.key, headers=list(r.headers))
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()

    types = sorted({e.type for e in events})
    targets = [bus_topics.events(t) for t in types]
    worker = _worker(settings)
    try:
        at_kill = await _wait_for(settings, targets, TOTAL // 4, within=120)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        assert at_kill < TOTAL, "the worker finished before it could be killed mid-stream"

        worker = _worker(settings)
        records = await _collect(settings, targets, {e.id for e in events}, within=180)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()

    ids = [dict(r.headers)["ce_id"].decode() for r in records]
    seen = Counter(ids)
    assert set(seen) == {e.id for e in events}, "an event was lost"
    duplicates = sum(seen.values()) - len(seen)
    print(f"killed after {at_kill} of {TOTAL}; duplicates after restart: {duplicates}")
    # First arrivals per key (within an events topic) are still in publication order.
    position = {e.id: i for i, e in enumerate(events)}
    firsts: dict[tuple[str, bytes], list[int]] = defaultdict(list)
    done: set[str] = set()
    for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        event_id = dict(r.headers)["ce_id"].decode()
        if event_id not in done:
            done.add(event_id)
            firsts[(r.topic, r.key)].append(position[event_id])
    assert all(seq == sorted(seq) for seq in firsts.values())
