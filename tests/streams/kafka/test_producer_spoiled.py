"""Issue 13 item 1 on a 3-node cluster of this module's own: a partition without a leader for
longer than the request timeout leaves a bare idempotent aiokafka producer failing with
`OutOfOrderSequenceNumber` for good, and our `Producer` sends again by itself.

Why a leaderless partition: aiokafka 0.14 expires an idempotent producer's batch only in
`drain_by_nodes`, when the metadata names no leader for its partition (-1) and the batch is
older than `request_timeout_ms`; the batch already took its sequence numbers, so the broker
refuses every later batch of that producer to that partition. One stopped broker of a
one-node cluster never gets there (no live node says "no leader"); the only replica's node of
a replication-factor-1 partition stopped on a 3-node cluster does.

Ours is also cut off (cancelled, as an HTTP request's timeout does) in the middle of that
replacement: it must still replace its client on a later send, not queue into a client that
was never started (before the fix every later send hung there).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import OutOfOrderSequenceNumber

from connectors.kafka_local import LocalKafka, free_port_range
from streams.chaos.cluster import read_topic
from streams.config import KafkaSettings, Settings, load_settings
from streams.kafka.clients import Producer, make_admin, make_producer

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REQUEST_TIMEOUT_MS = 3000
KEY = b"zaak-0001"  # one key, pinned to partition 0: its order is the order to keep
PARTITION = 0
AFTER = 10  # sends after the node is back: every one fails on the bare producer


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """Three nodes this module may stop: never the shared broker."""
    kafka = LocalKafka(
        data_dir=tmp_path_factory.mktemp("spoil-kafka"),
        cache_dir=load_settings().local_kafka.cache_dir,
        nodes=3,
        port=free_port_range(6),
        heap_mb=256,
        start_timeout_s=120.0,
    )
    try:
        kafka.up(progress=lambda line: None)
        yield kafka
    finally:
        kafka.down()


@dataclass
class Sent:
    """What one producer was asked to send, and how each record ended."""

    name: str
    futures: list[tuple[bytes, asyncio.Future[Any]]] = field(default_factory=list)

    def value(self) -> bytes:
        return b"%s-%d" % (self.name.encode(), len(self.futures))

    def errors(self) -> list[BaseException]:
        return [
            f.exception()  # type: ignore[misc]
            for _, f in self.futures
            if f.done() and not f.cancelled() and f.exception() is not None
        ]

    def acked(self) -> list[bytes]:
        return [v for v, f in self.futures if f.done() and not f.cancelled() and not f.exception()]


async def _send(producer: AIOKafkaProducer | Producer, topic: str, sent: Sent) -> None:
    value = sent.value()
    future = await producer.send(topic, value, key=KEY, partition=PARTITION)
    sent.futures.append((value, future))


async def _send_every(
    producer: AIOKafkaProducer | Producer, topic: str, sent: Sent, stop: asyncio.Event
) -> None:
    # A send every 50 ms, none awaited; ours stops once spoiled, before its next send
    # would replace its client (that send is the test's).
    while not stop.is_set() and not (isinstance(producer, Producer) and producer.spoiled):
        await _send(producer, topic, sent)
        await asyncio.sleep(0.05)


async def _leader(producer: AIOKafkaProducer, topic: str) -> int:
    await producer.client.force_metadata_update()
    leader = producer.client.cluster.leader_for_partition(TopicPartition(topic, PARTITION))
    assert isinstance(leader, int)
    return leader


async def _stop_node(kafka: LocalKafka, node_id: int) -> None:
    """SIGTERM: a controlled shutdown, after which the controller names no leader (-1) for the
    partitions whose only replica the node holds."""
    [pid] = [s.pid for s in kafka.status() if s.node_id == node_id]
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    async with asyncio.timeout(60):
        while any(s.running for s in kafka.status() if s.node_id == node_id):  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_a_leaderless_partition_spoils_a_bare_producer_and_ours_recovers(
    cluster: LocalKafka,
) -> None:
    settings = Settings(
        mode="test",
        kafka=KafkaSettings(bootstrap_servers=cluster.bootstrap_servers, partitions=3),
        security={"pseudonym_key": "test-pseudonym-key"},  # type: ignore[arg-type]
    )
    topic = f"spoil-{uuid.uuid4().hex[:8]}"
    admin = make_admin(settings.kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()

    bare = AIOKafkaProducer(
        bootstrap_servers=cluster.bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        linger_ms=0,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
    )
    ours = make_producer(settings, "spoil", request_timeout_ms=REQUEST_TIMEOUT_MS)
    bare_sent, ours_sent = Sent("bare"), Sent("ours")
    await bare.start()
    await ours.start()
    try:
        # Both producers have written to the partition: the broker knows their sequences.
        async with asyncio.timeout(60):
            for producer, sent in ((bare, bare_sent), (ours, ours_sent)):
                for _ in range(3):
                    await _send(producer, topic, sent)
                    await sent.futures[-1][1]
        node = await _leader(bare, topic)

        stop = asyncio.Event()
        senders = [
            asyncio.create_task(_send_every(bare, topic, bare_sent, stop)),
            asyncio.create_task(_send_every(ours, topic, ours_sent, stop)),
        ]
        started = time.monotonic()
        await _stop_node(cluster, node)
        # The outage lasts until both producers have had a batch expire (a state, not a time).
        async with asyncio.timeout(60):
            while not (bare_sent.errors() and ours_sent.errors()):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        down_s = time.monotonic() - started
        await asyncio.to_thread(cluster.up, progress=lambda line: None)
        stop.set()
        await asyncio.gather(*senders)
        print(f"node {node} down {down_s:.1f} s; back after {time.monotonic() - started:.1f} s")
        print("expired:", {type(e).__name__ for e in bare_sent.errors() + ours_sent.errors()})

        # The first OutOfOrderSequenceNumber (the batch that waited out the outage) spoils
        # ours. Its next send replaces the client: cut off while it does so (an HTTP
        # request's timeout in the API), the producer must still replace it on a later send.
        async with asyncio.timeout(30):
            while ours.spoiled is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert isinstance(ours.spoiled, OutOfOrderSequenceNumber), ours.spoiled
        cut = asyncio.create_task(ours.send(topic, b"cut-off", key=KEY, partition=PARTITION))
        await asyncio.sleep(0)  # the send has started the replacement and waits on it
        cut.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cut
        assert cut.cancelled()

        # Ours sends again: the first sends may still fail, then every later send succeeds.
        async with asyncio.timeout(30):
            while True:
                await _send(ours, topic, ours_sent)
                with contextlib.suppress(Exception):  # failing is what is being waited out
                    await asyncio.wait_for(asyncio.shield(ours_sent.futures[-1][1]), 10)
                    break
                await asyncio.sleep(0.1)
        for _ in range(AFTER):
            await _send(ours, topic, ours_sent)
        await asyncio.gather(*(f for _, f in ours_sent.futures[-AFTER:]))
        assert ours.replaced >= 1

        # The bare producer, on the same partition that ours writes to again, is stuck.
        after: list[BaseException | None] = []
        for _ in range(AFTER):
            await _send(bare, topic, bare_sent)
            try:
                await bare_sent.futures[-1][1]
                after.append(None)
            except Exception as exc:  # the error is what is asserted
                after.append(exc)
        assert all(isinstance(e, OutOfOrderSequenceNumber) for e in after), after
    finally:
        await asyncio.gather(*(f for _, f in bare_sent.futures), return_exceptions=True)
        await asyncio.gather(*(f for _, f in ours_sent.futures), return_exceptions=True)
        await bare.stop()
        await ours.stop()

    records = await read_topic(cluster.bootstrap_servers, topic)
    in_partition = [r.value for r in records if r.partition == PARTITION and r.key == KEY]
    acked = ours_sent.acked()
    print(
        f"ours: {len(ours_sent.futures)} sent, {len(acked)} acked, replaced {ours.replaced}; "
        f"bare: {len(bare_sent.futures)} sent, {len(bare_sent.acked())} acked"
    )
    # Every record whose future succeeded is there once, in the order sent.
    assert [v for v in in_partition if v in set(acked)] == acked
