"""The bus on a secured cluster: `LocalKafka(secure=True)`, as `gemeentebus kafka up --secure`
starts it (SASL_SSL with SCRAM-SHA-512, a private CA, the StandardAuthorizer denying what
no ACL allows), on free ports, one node, for this module alone."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord
from keys import SECRETS_KEY
from secure_node import secure_node

from connectors.kafka_local import LocalKafka, free_port_range
from streams.config import KafkaSettings, Settings
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.exceptions import ConfigurationError, KafkaUnavailable
from streams.ingress.client import KafkaPublisher
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.topics import Topics, TopicSpec, create_topics
from streams.kafka.transport import check_access
from streams.runner import running_bus

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    with secure_node(tmp_path_factory.mktemp("secure-kafka")) as kafka:
        yield kafka


def _settings(kafka: LocalKafka, **kafka_values: object) -> KafkaSettings:
    prefix = f"s{uuid.uuid4().hex[:10]}"
    values = {"topic_prefix": prefix, "partitions": 1, "request_timeout_s": 10.0}
    return kafka.kafka_settings(
        replication_factor=1,
        min_insync_replicas=1,
        allow_single_replica=True,
        **{**values, **kafka_values},
    )


async def _read(kafka: KafkaSettings, topic: str, count: int) -> list[ConsumerRecord]:
    consumer = make_consumer(kafka, "test-reader", topic, group=f"{kafka.topic_prefix}.reader")
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        async with asyncio.timeout(60):
            while len(records) < count:
                for part in (await consumer.getmany(timeout_ms=500)).values():
                    records += part
    finally:
        await consumer.stop()
    return records


def test_the_cluster_is_what_kafka_up_secure_says(secure_kafka: LocalKafka) -> None:
    creds = secure_kafka.credentials
    assert secure_kafka.client_settings()["security_protocol"] == "SASL_SSL"
    for private in [creds.password_file("admin"), creds.password_file("broker"), creds.broker_key]:
        assert private.stat().st_mode & 0o077 == 0, f"{private} is readable by others"
    assert creds.folder.stat().st_mode & 0o077 == 0
    props = secure_kafka.data_dir / "node-1" / "server.properties"
    assert props.stat().st_mode & 0o077 == 0  # it holds the broker's key and password
    text = props.read_text()
    assert "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer" in text
    assert "allow.everyone.if.no.acl.found=false" in text


async def test_produce_and_consume_over_sasl_ssl(secure_kafka: LocalKafka) -> None:
    kafka = _settings(secure_kafka)
    topic = f"{kafka.topic_prefix}.roundtrip"
    await check_access(kafka)  # let in: returns
    await create_topics(kafka, [TopicSpec(topic, 1)])
    producer = make_producer(kafka, "test-writer")
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=b"k")
    finally:
        await producer.stop()
    assert [r.value for r in await _read(kafka, topic, 5)] == [f"m{i}".encode() for i in range(5)]


async def test_the_worker_validates_and_routes_on_the_secure_cluster(
    secure_kafka: LocalKafka,
) -> None:
    """The real worker path: Faust (make_app, SCRAM through broker_credentials) reads the
    ingress topic and writes the events topic, with every other client on SASL_SSL too."""
    kafka = _settings(secure_kafka)
    settings = Settings(
        mode="test",
        kafka=kafka,
        security={"pseudonym_key": "test-pseudonym-key"},  # type: ignore[arg-type]
        http={"port": 0},  # type: ignore[arg-type]
    )
    event = EventFactory(11, today=dutch_today()).verhuisd()
    async with running_bus(settings, "worker"):
        async with KafkaPublisher(kafka) as publisher:
            await publisher.publish(event)
        (record,) = await _read(kafka, Topics(kafka.topic_prefix).events(event.type), 1)
    assert dict(record.headers)["ce_id"] == event.id.encode()


async def test_a_plaintext_client_is_refused(secure_kafka: LocalKafka) -> None:
    plaintext = KafkaSettings(bootstrap_servers=secure_kafka.bootstrap_servers)
    producer = make_producer(plaintext, "test-plaintext", request_timeout_ms=5000)
    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        async with asyncio.timeout(30):
            await producer.start()
    await producer.stop()
    with pytest.raises(ConfigurationError, match=r"kafka\.security_protocol is PLAINTEXT, but"):
        await check_access(plaintext)
    tls_only = KafkaSettings(
        bootstrap_servers=secure_kafka.bootstrap_servers,
        security_protocol="SSL",
        ssl_cafile=secure_kafka.credentials.ca_file,
    )
    with pytest.raises(ConfigurationError, match=r"kafka\.security_protocol is SSL, but .* SASL"):
        await check_access(tls_only)


@pytest.mark.plaintext_session  # the session broker's port is the plaintext one
async def test_a_tls_client_on_a_plaintext_port_is_told_so(kafka_bootstrap: str) -> None:
    tls = KafkaSettings(bootstrap_servers=kafka_bootstrap, security_protocol="SSL")
    with pytest.raises(ConfigurationError, match=r"is SSL, but .* does not speak TLS"):
        await check_access(tls)


async def test_a_wrong_password_names_the_setting(secure_kafka: LocalKafka) -> None:
    wrong = _settings(secure_kafka, sasl_password_file=None, sasl_password="not-the-password")
    with pytest.raises(ConfigurationError, match=r"^kafka\.sasl_password refused by localhost:"):
        await create_topics(wrong, [TopicSpec(f"{wrong.topic_prefix}.never", 1)])
    untrusted = _settings(secure_kafka, ssl_cafile=None)  # the system's CAs: not ours
    with pytest.raises(ConfigurationError, match=r"^kafka\.ssl_cafile: the certificate of"):
        await check_access(untrusted)


def _run(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`gemeentebus run --role worker` with `env`, nothing else of this process's."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GEMEENTEBUS_", "KAFKA_"))}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "run", "--role", "worker"],
        capture_output=True,
        text=True,
        env={
            **base,
            "GEMEENTEBUS_SECURITY__PSEUDONYM_KEY": "test-key",
            "GEMEENTEBUS_SECURITY__SECRETS_KEY": SECRETS_KEY,
            **env,
        },
        timeout=120,
        check=False,
        cwd=cwd,  # no gemeentebus.yaml there
    )


def _env(kafka: LocalKafka, **values: str) -> dict[str, str]:
    settings = {**kafka.client_settings(), **values}
    return {f"GEMEENTEBUS_KAFKA__{k.upper()}": v for k, v in settings.items() if v}


def test_run_with_a_wrong_password_exits_with_one_line(
    secure_kafka: LocalKafka, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    result = _run(_env(secure_kafka, sasl_password_file=str(wrong)), tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"gemeentebus: kafka.sasl_password refused by {secure_kafka.bootstrap_servers}: "
        "SCRAM-SHA-512 authentication failed for kafka.sasl_username 'admin' "
        "(wrong password, or no such user)"
    ]


def test_production_refuses_plaintext_unless_allowed(
    secure_kafka: LocalKafka, tmp_path: Path
) -> None:
    plaintext = {"GEMEENTEBUS_KAFKA__BOOTSTRAP_SERVERS": secure_kafka.bootstrap_servers}
    refused = _run(plaintext, tmp_path)  # mode: production, the default
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        "gemeentebus: refusing to start in production: kafka.security_protocol is PLAINTEXT"
    )
    assert "kafka.allow_plaintext: true" in refused.stderr
    # Allowed, the bus goes on to the cluster, which refuses a plaintext client itself.
    allowed = _run({**plaintext, "GEMEENTEBUS_KAFKA__ALLOW_PLAINTEXT": "true"}, tmp_path)
    assert allowed.returncode == 2
    assert allowed.stderr.strip().splitlines() == [
        f"gemeentebus: kafka.security_protocol is PLAINTEXT, but "
        f"{secure_kafka.bootstrap_servers} expects TLS: set SSL or SASL_SSL (and kafka.ssl_cafile)"
    ]


async def test_a_cluster_that_is_away_is_no_refusal(secure_kafka: LocalKafka) -> None:
    """`check_access` leaves a cluster that does not answer to the caller (who waits)."""
    away = _settings(secure_kafka, bootstrap_servers=f"localhost:{free_port_range(1)}")
    await check_access(away)
    with pytest.raises(KafkaUnavailable, match="cannot create topics"):
        await create_topics(away, [TopicSpec(f"{away.topic_prefix}.never", 1)])
