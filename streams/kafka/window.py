"""A window of the `gemeentebus.events.<type>` topics: its partitions, offsets and records.

Replays and reconciliation both read the events topics the same way: a group-less `consumer`
for explicit partitions, `partitions` of the topics that exist, `offsets_at` a time,
`oldest_kept` (where retention has trimmed), and `merged`, the records of a window of every
partition merged by record timestamp; within one millisecond by the acceptance order the
gate wrote (`gemeentebus_order`), so one person's move and death accepted in the same
millisecond come back in the order the bus accepted them, not by topic name.
A `Matcher` applies a subscription's *current* filters, volgindicaties and fields to what
was read.
"""

from __future__ import annotations

import heapq
from collections import defaultdict, deque
from collections.abc import AsyncGenerator, Iterable, Mapping
from datetime import UTC, date, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from streams.config import Settings
from streams.contract import attributes, codec
from streams.contract.envelope import CloudEvent
from streams.contract.headers import ORDER_HEADER, header
from streams.contract.rules import dutch_today
from streams.exceptions import InvalidEvent
from streams.kafka.clients import make_consumer
from streams.routing.matching import SubscriptionIndex
from streams.routing.subscriptions import Subscription, projection

__all__ = [
    "Matcher",
    "accepted_order",
    "consumer",
    "merged",
    "offsets_at",
    "oldest_kept",
    "partitions",
]


def consumer(settings: Settings) -> AIOKafkaConsumer:
    """A group-less reader for explicit partitions and offsets."""
    return make_consumer(settings, "replay-reader")


async def partitions(reader: AIOKafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of the topics that exist."""
    # what `reader.topics()` fetches, kept: the reader's own cache knows no unassigned topic
    cluster = await reader._client.fetch_all_metadata()
    return [
        TopicPartition(t, p)
        for t in sorted(set(topics) & cluster.topics())
        for p in sorted(cluster.partitions_for_topic(t) or ())
    ]


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
    digits = header(record.headers, ORDER_HEADER) or b""
    return int(digits) if digits.isdigit() and len(digits) <= 20 else 0


class Matcher:
    """The subscription's current definition applied to events read from an events topic."""

    def __init__(self, subscription: Subscription, key: bytes) -> None:
        self.subscription, self._key = subscription, key
        self._index = SubscriptionIndex([subscription])
        self._today: date = dutch_today()

    def match(self, record: ConsumerRecord[bytes, bytes]) -> CloudEvent | None:
        """The event, projected, if the subscription receives it (undecodable: None)."""
        headers = tuple((str(k), bytes(v)) for k, v in record.headers or ())
        try:
            event = codec.from_kafka(
                codec.KafkaRecord(key=record.key, headers=headers, value=record.value or b"")
            )
        except InvalidEvent:
            return None
        person = None
        if event.type in attributes.PERSON_TYPES:
            person = attributes.pseudonym(str(event.data["bsn"]), self._key)
        if not self._index.match(event, person, self._today):
            return None
        return event.with_data(projection(self.subscription, event.type)(event.data))
