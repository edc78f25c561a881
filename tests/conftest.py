"""Test harness: one real Kafka broker for the whole session, fresh topics for every test.

Where the broker comes from, first match wins:
1. `KAFKA_BOOTSTRAP_SERVERS` names an existing cluster (its transport, e.g. SASL_SSL, from
   the `GEMEENTEBUS_KAFKA__*` environment, as the bus reads it);
2. `GEMEENTEBUS_TEST_SECURE_KAFKA=1`: the local jar broker secured as `kafka up --secure`
   makes it (SASL_SSL, SCRAM, a private CA, ACLs enforced; the tests connect as its admin);
3. a Docker engine answers: testcontainers starts the official `apache/kafka` image;
4. otherwise the local jar broker (`connectors.kafka_local`) on free ports in a temp folder.
Whatever this file starts, it stops at the end of the session. Every test client is made by
the bus's own factory (`streams.kafka.clients`) from `settings`, so it speaks the transport.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiokafka.structs import ConsumerRecord
from keys import PSEUDONYM_KEY, SECRETS_KEY
from sweeper import Sweeper

from connectors.kafka_local import LocalKafka, free_port_range
from streams.config import ENV, KafkaSettings, Settings, load_settings
from streams.kafka.clients import make_consumer
from streams.kafka.topics import Topics

if TYPE_CHECKING:
    from streams.routing.store import SubscriptionStore

KAFKA_IMAGE = "apache/kafka:4.1.2"


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


SECURE_ENV = "GEMEENTEBUS_TEST_SECURE_KAFKA"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (say so, not skip) the tests about a secured session broker without one, and
    those that need a plaintext one with a secured one."""
    unfit = "plaintext_session" if os.environ.get(SECURE_ENV) == "1" else "secure_session"
    chosen = [item for item in items if item.get_closest_marker(unfit) is None]
    if len(chosen) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in chosen])
        items[:] = chosen


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    """How to reach a real broker that lives as long as the test session: its bootstrap
    servers and, when it is secured, the transport and credentials."""
    if os.environ.get(ENV["bootstrap"]):
        yield load_settings().kafka
        return
    secure = os.environ.get(SECURE_ENV) == "1"
    if not secure and _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
            yield KafkaSettings(bootstrap_servers=container.get_bootstrap_server())
        return
    cache = load_settings().local_kafka.cache_dir
    # The whole suite's topics live on this broker (thousands of partitions): 512 MB of heap
    # ran out once with every test of this session on one broker.
    kafka = LocalKafka(
        data_dir=tmp_path_factory.mktemp("kafka"),
        cache_dir=cache,
        port=free_port_range(2),
        heap_mb=1024,
        secure=secure,
    )
    try:
        kafka.up(progress=lambda line: print(line))
        yield kafka.kafka_settings()
    finally:
        kafka.down()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_cluster: KafkaSettings) -> str:
    """Bootstrap servers of the session's broker (`kafka_cluster` has its transport too)."""
    return kafka_cluster.bootstrap_servers


@pytest.fixture
def topics() -> Topics:
    """A topic namespace of this test alone."""
    return Topics(prefix=f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def sweeper(kafka_cluster: KafkaSettings) -> Iterator[Sweeper]:
    """Deletes finished tests' topics from the session broker (see `sweeper`)."""
    sweeping = Sweeper(kafka_cluster)
    yield sweeping
    sweeping.close()
    print(f"\ntopic sweeper: {sweeping.deleted} topics of finished tests deleted")
    for failure in sweeping.failures:
        print(f"topic sweeper: a sweep failed: {failure}")


@pytest.fixture
def settings(
    kafka_cluster: KafkaSettings, topics: Topics, tmp_path: Path, sweeper: Sweeper
) -> Iterator[Settings]:
    """Settings for one test: the session broker, this test's topics, the test keys. Its
    topics are deleted some time after it ends."""
    yield Settings(
        mode="test",
        # one broker: one replica, said explicitly (production refuses it otherwise)
        # deliver topics of several partitions, as a busy subscription's: the courier's
        # order and commits are per partition
        kafka=KafkaSettings.single_node(
            **kafka_cluster.transport(),
            topic_prefix=topics.prefix,
            partitions=3,
            deliver_partitions=3,
        ),
        security={"pseudonym_key": PSEUDONYM_KEY, "secrets_key": SECRETS_KEY},  # type: ignore[arg-type]
        # generous: fuzzing and schemathesis send thousands of requests as one client;
        # tests/streams/http/test_api_limits.py tightens them
        limits={  # type: ignore[arg-type]
            "requests_per_s": 100_000,
            "burst": 100_000,
            "subscriptions_per_client": 10_000,
            "replays_per_client": 1_000,
            "replays_total": 1_000,
        },
    )
    sweeper.finished(topics.prefix)


@pytest.fixture
async def bus_topics(settings: Settings) -> AsyncIterator[Topics]:
    """This test's namespace with every bus topic created on the broker."""
    from streams.contract.schemas import registry
    from streams.kafka.topics import bus_topics as specs
    from streams.kafka.topics import create_topics

    await create_topics(settings.kafka, specs(settings.kafka, registry().types()))
    yield Topics(settings.kafka.topic_prefix)


@pytest.fixture
async def store(settings: Settings, bus_topics: Topics) -> AsyncIterator[SubscriptionStore]:
    """The subscription set of this test's namespace, started and read."""
    from streams.routing.store import SubscriptionStore

    subscriptions = SubscriptionStore(settings, name="test-store")
    await subscriptions.start()
    await subscriptions.ready()
    yield subscriptions
    await subscriptions.stop()


async def _read_topic(
    kafka: KafkaSettings, topic: str, *, count: int, within: float = 60.0
) -> list[ConsumerRecord]:
    """Every record of `topic` from the start, once at least `count` arrived (or time is up)."""
    consumer = make_consumer(kafka, "test-read", topic, fetch_max_wait_ms=500)
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        async with asyncio.timeout(within):
            while len(records) < count:
                for part in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                    records.extend(part)
        # Anything beyond `count` that is already there (duplicates show up here).
        for part in (await consumer.getmany(timeout_ms=500, max_records=100000)).values():
            records.extend(part)
    except TimeoutError:
        pass  # the caller asserts on what arrived
    finally:
        await consumer.stop()
    return records


@pytest.fixture
def read_topic(kafka_cluster: KafkaSettings) -> Callable[..., Awaitable[list[ConsumerRecord]]]:
    """`await read_topic(topic, count=N)`: the topic's records once N arrived (or 60 s)."""

    def read(topic: str, *, count: int, within: float = 60.0) -> Awaitable[list[ConsumerRecord]]:
        return _read_topic(kafka_cluster, topic, count=count, within=within)

    return read
