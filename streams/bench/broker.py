"""The bench's broker and its Kafka chores: a namespace per run, ingress data, cleanup.

Scenarios that need Kafka get the broker `KAFKA_BOOTSTRAP_SERVERS` names, or a local broker
on free ports in a temporary folder that is stopped at the end, even on error. Their topics
live in a fresh namespace and are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from connectors.kafka_local import LocalKafka, fetch_jars, free_port_range
from streams.config import ENV, ClientConfig, SecuritySettings, Settings, SubscribeGrant
from streams.contract import codec
from streams.contract.attributes import partition_key
from streams.contract.rules import dutch_today
from streams.delivery.sinks import LOOPBACK
from streams.demo.generators import EventFactory
from streams.kafka.clients import make_admin, make_consumer, make_producer
from streams.kafka.topics import CREATE_CHUNK

__all__ = [
    "AIOKAFKA_WAIT_MS",
    "BENCH_PSEUDONYM_KEY",
    "BENCH_SECRETS_KEY",
    "Clock",
    "broker",
    "delete_namespace",
    "delete_topics",
    "namespace",
    "partitions",
    "publish",
    "raw_read_seconds",
    "watch",
]

log = logging.getLogger(__name__)

# Synthetic data only: the bench never needs (or sees) the production pseudonym key.
BENCH_PSEUDONYM_KEY: Final = "gemeentebus-bench"
# The owner of the bench's subscriptions: routing binds each to its owner's grant, so the
# bench's settings configure it (every type, volgindicaties; its token is never used).
BENCH_OWNER: Final = "bench"
_BENCH_CLIENT: Final = ClientConfig(
    id=BENCH_OWNER,
    token_sha256="0" * 64,
    subscribe=SubscribeGrant(types=("*",), purpose="bench", volgindicaties=True),
)
# The key its subscriptions' webhook secrets are sealed with: 32 bytes, base64 (bench only).
BENCH_SECRETS_KEY: Final = "Z2VtZWVudGVidXMtYmVuY2gtc2VjcmV0cy1rZXktMzI="
_PUBLISHER_KEY: Final = b"bench"
_POLL_S: Final = 0.02
_CHUNK: Final = 5_000
# aiokafka's own long-poll: the raw clients the bench compares against keep its defaults.
AIOKAFKA_WAIT_MS: Final = 500


def namespace(settings: Settings, bootstrap: str, role: str, token: str) -> Settings:
    """`settings` on `bootstrap`, with topics and groups of this run alone, the bench key, and
    the bench's subscriber (`BENCH_OWNER`)."""
    prefix = f"{settings.kafka.topic_prefix[:16]}-bench-{token}-{role}"
    # The bench runs on one local broker: one replica, said explicitly.
    kafka = settings.kafka.model_copy(
        update={
            "bootstrap_servers": bootstrap,
            "topic_prefix": prefix,
            "replication_factor": 1,
            "min_insync_replicas": 1,
            "allow_single_replica": True,
            "allow_plaintext": True,  # the bench's brokers are local or test clusters
        }
    )
    security = SecuritySettings(
        pseudonym_key=SecretStr(BENCH_PSEUDONYM_KEY), secrets_key=SecretStr(BENCH_SECRETS_KEY)
    )
    # the bench's receivers listen on loopback, over http (`streams.delivery.sinks`)
    delivery = settings.delivery.model_copy(
        update={"allow_http": True, "allowed_private_sinks": LOOPBACK}
    )
    clients = (*(c for c in settings.clients if c.id != BENCH_OWNER), _BENCH_CLIENT)
    return settings.model_copy(
        update={"kafka": kafka, "security": security, "delivery": delivery, "clients": clients}
    )


async def publish(settings: Settings, topics: Sequence[str], n: int) -> None:
    """`n` valid ingress records into each of `topics`, as a publisher writes them (binary
    mode, keyed by person), made in chunks so the bench's own data stays out of the RSS."""
    factory = EventFactory(4, today=dutch_today())
    producer = make_producer(settings, "bench-publisher")
    await producer.start()
    try:
        for start in range(0, n, _CHUNK):
            records = [
                codec.to_kafka(e, key=partition_key(e.type, e.data, _PUBLISHER_KEY))
                for e in factory.mixed(min(_CHUNK, n - start))
            ]
            futures = [
                await producer.send(topic, r.value, key=r.key, headers=list(r.headers))
                for topic in topics
                for r in records
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass(slots=True)
class Clock:
    """When a run started, when its first output appeared and when the last one did."""

    started: float
    first: float | None = None
    first_count: int = 0
    done: float | None = None


async def watch(
    settings: Settings,
    tps: list[TopicPartition],
    n: int,
    clock: Clock,
    on_count: Callable[[int], None] | None = None,
) -> None:
    """Poll the end offsets of `tps` (never consuming) until they hold `n` records."""
    consumer = make_consumer(settings, "bench-watch")
    await consumer.start()
    try:
        while True:
            count = sum((await consumer.end_offsets(tps)).values())
            now = time.perf_counter()
            if on_count is not None:
                on_count(count)
            if count and clock.first is None:
                clock.first, clock.first_count = now, count
            if count >= n:
                clock.done = now
                return
            await asyncio.sleep(_POLL_S)
    finally:
        await consumer.stop()


async def delete_namespace(settings: Settings, known: Iterable[str] = ()) -> int:
    """Delete every topic under the run's prefix and each of `known` (a topic just created
    may not be listed yet), in requests of `CREATE_CHUNK` names; how many were asked for.
    Best effort, as `delete_topics`."""
    admin = make_admin(settings, "bench-admin")
    head = f"{settings.kafka.topic_prefix}."
    try:
        await admin.start()
        listed = {t for t in await admin.list_topics() if t.startswith(head)}
        names = sorted(listed | {t for t in known if t.startswith(head)})
        for start in range(0, len(names), CREATE_CHUNK):
            await admin.delete_topics(names[start : start + CREATE_CHUNK])
        return len(names)
    except (KafkaError, OSError) as exc:
        log.warning("could not delete the bench topics: %s", exc)
        return 0
    finally:
        await admin.close()


async def delete_topics(settings: Settings, names: list[str]) -> None:
    """Delete the bench's topics; best effort: the figures still count when this fails."""
    admin = make_admin(settings, "bench-admin")
    try:
        await admin.start()
        await admin.delete_topics(names)
    except (KafkaError, OSError) as exc:
        log.warning("could not delete the bench topics: %s", exc)
    finally:
        await admin.close()


def partitions(names: Sequence[str], count: int) -> list[TopicPartition]:
    """Every partition 0..count-1 of each topic in `names`."""
    return [TopicPartition(name, p) for name in names for p in range(count)]


@contextlib.contextmanager
def broker(
    settings: Settings, needed: bool, progress: Callable[[str], None]
) -> Iterator[tuple[str | None, str | None]]:
    """(bootstrap servers, broker version if known): the named cluster or a local one."""
    if not needed:
        yield None, None
        return
    named = os.environ.get(ENV["bootstrap"])
    if named:
        yield named, None
        return
    local = settings.local_kafka
    with tempfile.TemporaryDirectory(prefix="gemeentebus-bench-") as data_dir:
        kafka = LocalKafka(
            data_dir=Path(data_dir),
            cache_dir=local.cache_dir,
            port=free_port_range(2),
            heap_mb=local.heap_mb,
            start_timeout_s=local.start_timeout_s,
        )
        try:
            bootstrap = kafka.up(progress=progress)
            yield bootstrap, jar_version(local.cache_dir, progress)
        finally:
            kafka.down()


def jar_version(cache_dir: Path, progress: Callable[[str], None]) -> str | None:
    """The Kafka version of the jars in the local broker's cache."""
    jars = fetch_jars(cache_dir, progress=progress)
    found = [re.fullmatch(r"kafka-clients-(.+)\.jar", p.name) for p in jars.iterdir()]
    return next((m.group(1) for m in found if m), None)


async def raw_read_seconds(settings: Settings, topics: Sequence[str], n: int) -> float:
    """Seconds one aiokafka consumer takes to read `n` records of `topics` from the start,
    doing nothing with them: the raw read the bench compares against."""
    consumer = make_consumer(settings, "bench-raw-read", fetch_max_wait_ms=AIOKAFKA_WAIT_MS)
    await consumer.start()
    try:
        consumer.assign(partitions(topics, settings.kafka.partitions))
        await consumer.seek_to_beginning()
        started, read = time.perf_counter(), 0
        while read < n:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            read += sum(len(part) for part in batches.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()
