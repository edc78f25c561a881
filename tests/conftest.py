"""Test harness: one real Kafka broker for the whole session, fresh topics for every test.

Where the broker comes from, first match wins:
1. `KAFKA_BOOTSTRAP_SERVERS` names an existing cluster;
2. a Docker engine answers: testcontainers starts the official `apache/kafka` image;
3. otherwise the local jar broker (`connectors.kafka_local`) on free ports in a temp folder.
Whatever this file starts, it stops at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from connectors.kafka_local import LocalKafka, free_port_range
from streams.config import ENV, KafkaSettings, Settings, load_settings
from streams.topics import Topics

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


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real broker that lives as long as the test session."""
    existing = os.environ.get(ENV["bootstrap"])
    if existing:
        yield existing
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    cache = load_settings().local_kafka.cache_dir
    kafka = LocalKafka(
        data_dir=tmp_path_factory.mktemp("kafka"), cache_dir=cache, port=free_port_range(2)
    )
    try:
        yield kafka.up(progress=lambda line: print(line))
    finally:
        kafka.down()


@pytest.fixture
def topics() -> Topics:
    """A topic namespace of this test alone."""
    return Topics(prefix=f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def settings(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> Settings:
    """Settings for one test: the session broker, this test's topics, a test pseudonym key."""
    return Settings(
        mode="test",
        kafka=KafkaSettings(
            bootstrap_servers=kafka_bootstrap, topic_prefix=topics.prefix, partitions=3
        ),
        security={"pseudonym_key": "test-pseudonym-key"},  # type: ignore[arg-type]
    )


@pytest.fixture
async def bus_topics(settings: Settings) -> AsyncIterator[Topics]:
    """This test's namespace with every bus topic created on the broker."""
    from streams.schemas import registry
    from streams.topics import bus_topics as specs
    from streams.topics import create_topics

    await create_topics(settings.kafka, specs(settings.kafka, registry().types()))
    yield Topics(settings.kafka.topic_prefix)
