"""The chaos suite's own brokers: a LocalKafka of 1 or 3 nodes on free ports in a temp folder.

Never the shared broker a developer or CI named: a scenario kills and stops these. Every
node is a process this run started (its pid is in the node's pid file), and `down()`
ends them all, also on error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from connectors.kafka_local import LocalKafka, free_port_range
from streams.config import KafkaSettings, LocalKafkaSettings
from streams.kafka.clients import make_consumer

__all__ = ["Brokers", "heap_for", "read_topic"]

_HEAP_MB = 320
# What a broker's heap needs per partition beside `_HEAP_MB` (its log, indexes' metadata,
# producer state, metrics): the full delivery-kill's ~8,000 partitions filled 320 MB and
# the broker spent its time in full collections (4 a second), answering nothing in time.
_HEAP_PER_PARTITION_MB = 0.125


def heap_for(partitions: int) -> int:
    """The heap (MB) of a chaos broker that will hold about `partitions` partitions."""
    return _HEAP_MB + int(partitions * _HEAP_PER_PARTITION_MB)


class Brokers:
    """A private Kafka cluster for one or more scenarios."""

    def __init__(
        self, folder: Path, local: LocalKafkaSettings, *, nodes: int = 1, heap_mb: int = _HEAP_MB
    ) -> None:
        self.nodes = nodes
        self.kafka = LocalKafka(
            data_dir=folder,
            cache_dir=local.cache_dir,
            nodes=nodes,
            port=free_port_range(2 * nodes),
            heap_mb=heap_mb,
            start_timeout_s=max(local.start_timeout_s, 120.0),
        )

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap_servers

    async def up(self) -> str:
        """Start every node that is not running; return once all answer."""
        return await asyncio.to_thread(self.kafka.up, progress=lambda _: None)

    async def down(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after a minute)."""
        await asyncio.to_thread(self.kafka.down)

    def pid(self, node_id: int) -> int | None:
        return next((s.pid for s in self.kafka.status() if s.node_id == node_id), None)

    async def kill(self, node_id: int) -> None:
        """SIGKILL one node and wait until it is gone."""
        pid = self.pid(node_id)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        async with asyncio.timeout(30.0):
            while self.pid(node_id) is not None:  # noqa: ASYNC110 - polling a process table
                await asyncio.sleep(0.1)


async def read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record in `topic` now, partition by partition, each in offset order."""
    # The suite's own brokers speak plaintext on loopback.
    reader = make_consumer(KafkaSettings(bootstrap_servers=bootstrap), "chaos-reader")
    await reader.start()
    try:
        found = reader.partitions_for_topic(topic)
        if found is None:
            await reader._client.force_metadata_update()
            found = reader.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(found)]
        if not tps:
            return []
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {tp: [] for tp in tps}
        while [tp for tp in tps if await reader.position(tp) < ends[tp]]:
            for tp, batch in (await reader.getmany(timeout_ms=500, max_records=5000)).items():
                records[tp] += batch
        return [r for tp in tps for r in records[tp]]
    finally:
        await reader.stop()
