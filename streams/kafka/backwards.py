"""Reading one partition from its end backwards, a chunk at a time, within a budget.

What the last N records of something are (a subscription's delivery attempts, the last
occurrence of an event id) is found near the end of a partition: `backwards` reads
[begin, end) newest chunk first, so a paged read stops as soon as it has its page and never
reads a whole topic because it is long.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

__all__ = ["backwards"]


async def backwards(
    reader: AIOKafkaConsumer, tp: TopicPartition, *, begin: int, end: int, chunk: int
) -> AsyncGenerator[tuple[int, list[ConsumerRecord[bytes, bytes]]], None]:
    """(first offset, records) of [begin, end) in chunks of `chunk` offsets, the last chunk
    first; the records of a chunk in offset order. `reader` is group-less; it is assigned
    `tp` alone."""
    reader.assign([tp])
    high = end
    while high > begin:
        low = max(begin, high - chunk)
        reader.seek(tp, low)
        records: list[ConsumerRecord[bytes, bytes]] = []
        while await reader.position(tp) < high:
            batches = await reader.getmany(tp, timeout_ms=200, max_records=min(chunk, 2000))
            for record in batches.get(tp, []):
                if record.offset < high:
                    records.append(record)
        yield low, records
        high = low
