"""A window of the `gemeentebus.events.<type>` topics: its partitions, offsets and records.

Replays and reconciliation both read the events topics the same way: a group-less `consumer`
for explicit partitions, `offsets_at` a time,
`oldest_kept` (where retention has trimmed), and `merged`, the records of a window of every
partition merged by record timestamp; within one millisecond by the acceptance order the
gate wrote (`gemeentebus_order`), so one person's move and death accepted in the same
millisecond come back in the order the bus accepted them, not by topic name.
The partitions of a topic come from `streams.kafka.topics.partitions`; a subscription's
current definition is applied to what was read by `streams.routing.matching.Matcher`.
"""

from __future__ import annotations

import heapq
from collections import defaultdict, deque
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from streams.config import Settings
from streams.contract.headers import ORDER_HEADER, header
from streams.kafka.clients import make_consumer

__all__ = [
    "accepted_order",
    "consumer",
    "merged",
    "offsets_at",
    "oldest_kept",
]


def consumer(settings: Settings) -> AIOKafkaConsumer:
    """A group-less reader for explicit partitions and offsets."""
    return make_consumer(settings, "replay-reader")


async def offsets_at(
    reader: AIOKafkaConsumer, tps: list[TopicPartition], at: datetime | None
) -> dict[TopicPartition, int]:
    """Per partition, the first offset with a timestamp >= `at` (the end offset when none is;
    `at=None`: the end offset now)."""
    ends: dict[TopicPartition, int] = dict(await reader.end_offsets(tps)) if tps else {}
    if at is None or not tps:
        return ends
    found = await reader.offsets_for_times({tp: int(at.timestamp() * 1000) for tp in tps})
    return {tp: ends[tp] if found[tp] is None else found[tp].offset for tp in tps}


async def oldest_kept(reader: AIOKafkaConsumer, tps: list[TopicPartition]) -> datetime | None:
    """The latest first-record time over partitions retention has already trimmed (None: none)."""
    begins = await reader.beginning_offsets(tps) if tps else {}
    trimmed = [tp for tp, offset in begins.items() if offset > 0]
    if not trimmed:
        return None
    ends = await reader.end_offsets(trimmed)
    firsts = []
    for tp in trimmed:
        if ends[tp] <= begins[tp]:
            continue
        found = await reader.offsets_for_times({tp: 0})
        if found[tp] is not None:
            firsts.append(found[tp].timestamp)
    return datetime.fromtimestamp(max(firsts) / 1000, UTC) if firsts else None


async def merged(
    reader: AIOKafkaConsumer,
    starts: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
) -> AsyncGenerator[ConsumerRecord[bytes, bytes], None]:
    """The records of [start, end) of every partition: each in offset order, merged by
    (timestamp, acceptance order, partition); a record without the order header (written
    before it existed, or by another writer) sorts first within its millisecond.

    A heap holds the head record of every partition that has one buffered; a partition whose
    buffer runs dry is read again before the next record is chosen, so the choice always
    sees the head of every unfinished partition.
    """
    active = [tp for tp in starts if starts[tp] < ends[tp]]
    reader.assign(active)
    for tp in active:
        reader.seek(tp, starts[tp])
    buffers: dict[TopicPartition, deque[ConsumerRecord[bytes, bytes]]] = defaultdict(deque)
    heads: list[tuple[int, int, TopicPartition]] = []  # (timestamp, order, partition) of heads

    async def fill(hungry: list[TopicPartition]) -> None:
        """Read until each of `hungry` has a record buffered or is read to its end."""
        while hungry:
            batches = await reader.getmany(*hungry, timeout_ms=200, max_records=2000)
            for tp, records in batches.items():
                buffers[tp].extend(r for r in records if r.offset < ends[tp])
            still = []
            for tp in hungry:
                if buffers[tp]:
                    heapq.heappush(heads, _head(buffers[tp][0], tp))
                elif await reader.position(tp) < ends[tp]:
                    still.append(tp)
            hungry = still

    await fill(active)
    while heads:
        *_, tp = heapq.heappop(heads)
        record = buffers[tp].popleft()
        if record.offset + 1 < ends[tp]:
            if buffers[tp]:
                heapq.heappush(heads, _head(buffers[tp][0], tp))
            else:
                await fill([tp])
        yield record


def _head(
    record: ConsumerRecord[bytes, bytes], tp: TopicPartition
) -> tuple[int, int, TopicPartition]:
    return record.timestamp, accepted_order(record), tp


def accepted_order(record: ConsumerRecord[bytes, bytes]) -> int:
    """The gate's acceptance order of an events-topic record (0 when it carries none)."""
    digits = _last_order(record.headers)
    if digits is None:
        digits = header(record.headers, ORDER_HEADER) or b""
    return int(digits) if digits.isdigit() and len(digits) <= 20 else 0


def _last_order(headers: Any) -> bytes | None:
    """The order header's value where the gate puts it, last, when it is the only one and
    every header is a plain (text, bytes) pair; None: look the slow way (`header`)."""
    if type(headers) not in (tuple, list) or not headers:
        return None
    last = headers[-1]
    if type(last) is not tuple or len(last) != 2 or last[0] != ORDER_HEADER:
        return None
    if type(last[1]) is not bytes:
        return None
    for item in headers[:-1]:
        if type(item) is not tuple or len(item) != 2 or type(item[0]) is not str:
            return None
        if item[0] == ORDER_HEADER:
            return None
    return last[1]
