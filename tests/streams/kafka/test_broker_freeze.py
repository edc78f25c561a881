"""A broker frozen for 15 s (SIGSTOP) on a broker of this module's own: the idempotent
producer sends again by itself afterwards.

Not a reproduction of issue 13 item 1: a bare AIOKafkaProducer recovers from this freeze
too (and from a 15 s stop/start: with one node no live node names the partition leaderless,
so no batch expires), so this test guards the recovery, it does not prove the wrapper's fix;
test_producer_spoiled.py reproduces the item on 3 nodes. The worker under a freeze is not
tested here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.kafka_local import LocalKafka, free_port_range
from streams.config import KafkaSettings, Settings, load_settings
from streams.contract.schemas import registry
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics, bus_topics, create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FREEZE_S = 15.0


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker this module may freeze: never the shared one."""
    kafka = LocalKafka(
        data_dir=tmp_path_factory.mktemp("own-kafka"),
        cache_dir=load_settings().local_kafka.cache_dir,
        port=free_port_range(2),
    )
    kafka.up(progress=lambda line: None)
    try:
        yield kafka
    finally:
        kafka.down()


def _settings(kafka: LocalKafka, tmp_path: Path) -> Settings:
    return Settings(
        mode="test",
        kafka=KafkaSettings.single_node(
            bootstrap_servers=kafka.bootstrap_servers,
            topic_prefix=f"f{os.getpid()}{int(time.monotonic() * 1000) % 100000}",
            partitions=3,
            request_timeout_s=5.0,
        ),
        security={"pseudonym_key": "test-pseudonym-key"},  # type: ignore[arg-type]
    )


async def _freeze(kafka: LocalKafka, seconds: float) -> None:
    [node] = kafka.status()
    assert node.pid is not None
    os.kill(node.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)  # the outage itself: a duration, not a wait for a state
    finally:
        os.kill(node.pid, signal.SIGCONT)


async def test_a_producer_sending_through_a_freeze_recovers(
    own_kafka: LocalKafka, tmp_path: Path
) -> None:
    settings = _settings(own_kafka, tmp_path)
    await create_topics(settings.kafka, bus_topics(settings.kafka, registry().types()))
    topic = Topics(settings.kafka.topic_prefix).ingress
    producer = make_producer(settings, "freeze")
    await producer.start()
    futures: list[asyncio.Future[Any]] = []
    try:
        freeze = asyncio.create_task(_freeze(own_kafka, FREEZE_S))
        while not freeze.done():  # a send every 100 ms, none awaited
            futures.append(await producer.send(topic, b"during", b"k%d" % len(futures)))
            await asyncio.sleep(0.1)
        await freeze
        # after the freeze: sends must succeed again, within a deadline
        async with asyncio.timeout(30):
            while True:
                future = await producer.send(topic, b"after", b"k")
                try:
                    await future
                    break
                except Exception:  # failing is what is being waited out
                    await asyncio.sleep(0.2)
    finally:
        await asyncio.gather(*futures, return_exceptions=True)
        await producer.stop()
