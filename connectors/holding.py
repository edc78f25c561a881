"""What a courier holds: the records read and not finished, and per partition the offsets.

`held` makes the courier's record of a client's record and never raises: every record is
converted by `read_record`, and one that is no event the courier can send (a null or
non-bytes header value, a header that is not UTF-8, a value over the size limit, a value
that is not a UTF-8 JSON CloudEvent) is held with its `problem`, to be dead-lettered byte
for byte, null header values included.

`Watermark` keeps only the *unfinished* offsets of a partition, in read order: the first is
the offset to commit, and what finished above it takes no memory at all.

`Holding` is one courier's bookkeeping: its records split into lanes by (partition, key),
each lane in offset order (a record without a key is its partition's null lane), the
watermark of each partition, the offsets committed, and the back-pressure that asks for.
A courier holds at most `MAX_PENDING` unfinished records; past that it pauses every
partition until half have finished. A lane (one key) holds at most `LANE_CAP` records:
past that its partition pauses (Kafka pauses partitions, not keys), so one key that keeps
failing holds back the other keys of its partition only once it has `LANE_CAP` records
waiting, and never the other partitions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import TopicPartition

from connectors.writes import Write
from streams.contract.headers import RawHeaders
from streams.contract.record import KafkaRecord, Unreadable
from streams.delivery.log import EventRef, event_ref
from streams.exceptions import FieldError

__all__ = [
    "LANE_CAP",
    "MAX_PENDING",
    "Held",
    "Holding",
    "Lane",
    "Watermark",
    "held",
    "poison",
    "unsendable",
    "window_start",
]

log = logging.getLogger(__name__)

MAX_PENDING: Final = 2000  # unfinished records held per courier before it pauses everything
LANE_CAP: Final = 500  # records one lane (key) may hold before its partition pauses

Lane = tuple[int, bytes | None]  # (partition, key)


def unsendable(record: KafkaRecord) -> tuple[FieldError | None, dict[str, Any] | None]:
    """Why a deliver-topic record cannot be POSTed as a structured-mode CloudEvent (None when
    it can), and its parsed JSON."""
    for name, raw in record.headers:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return FieldError(f"headers.{name}", "not_utf8", "a header value is not UTF-8"), None
    try:
        body = json.loads(record.value.decode("utf-8"))
    except UnicodeDecodeError:
        return FieldError("value", "not_utf8", "the value is not UTF-8"), None
    except (ValueError, RecursionError):
        return FieldError("value", "not_json", "the value is not JSON"), None
    if not isinstance(body, dict) or not all(
        isinstance(body.get(name), str) and body[name] for name in ("id", "source", "type")
    ):
        return FieldError(
            "value", "not_cloudevent", "the value is no CloudEvent (JSON with id, source, type)"
        ), None
    return None, body


@dataclass(slots=True, eq=False)
class Held:
    """A deliver-topic record as its lane holds it, until it is finished."""

    partition: int
    offset: int
    key: bytes | None
    headers: RawHeaders
    value: bytes | None
    ref: EventRef
    since: float  # monotonic; the retry window runs from here (`window_start`)
    problem: FieldError | None = None  # unsendable: dead-lettered without an attempt
    writes: list[asyncio.Task[Write]] = field(default_factory=list)


@dataclass(slots=True)
class Watermark:
    """The unfinished offsets of one partition, read in order; below the first, all done."""

    next_offset: int | None = None  # one past the last offset read
    unfinished: OrderedDict[int, None] = field(default_factory=OrderedDict)

    def read(self, offset: int) -> None:
        self.unfinished[offset] = None
        self.next_offset = offset + 1

    def finish(self, offset: int) -> None:
        self.unfinished.pop(offset, None)

    @property
    def committable(self) -> int | None:
        """The next offset to commit: the first unfinished one, else one past the last read."""
        return next(iter(self.unfinished), self.next_offset)


def window_start(timestamp_ms: int | None, *, started: float, now: float, wall_now: float) -> float:
    """When a record's retry window began, on the monotonic clock: when the record came into
    its deliver topic (its Kafka timestamp), but never before this courier `started`.

    A record that waited unread in Kafka behind a failing key or the pending cap has used up
    that part of its window, so a subscriber down for longer than the window has its whole
    backlog dead-lettered after about one window, whatever the backlog's size; a delivery
    process that was down costs no record any of its window. `now` is `time.monotonic()`,
    `wall_now` `time.time()`; a timestamp in the future or missing counts as now.
    """
    if timestamp_ms is None or timestamp_ms < 0:
        return now
    waited = max(0.0, wall_now - timestamp_ms / 1000)
    return now - min(waited, max(0.0, now - started))


def held(
    partition: int, offset: int, read: KafkaRecord | Unreadable, since: float | None = None
) -> Held:
    """The record `read_record` made, as held: with its `problem` when it cannot be sent.
    `since`: when its retry window began (`window_start`; default now)."""
    since = time.monotonic() if since is None else since
    if isinstance(read, Unreadable):
        return poison(partition, offset, read, read.error, since)
    problem, body = unsendable(read)
    ref = event_ref(read.key, read.headers, read.value, body=body)
    return Held(partition, offset, read.key, read.headers, read.value, ref, since, problem)


def poison(
    partition: int,
    offset: int,
    read: KafkaRecord | Unreadable,
    problem: FieldError,
    since: float,
) -> Held:
    """`read` held to be dead-lettered for `problem`."""
    ref = event_ref(read.key, read.headers, read.value)
    return Held(partition, offset, read.key, read.headers, read.value, ref, since, problem)


class Holding:
    """What one courier read and has not finished, by lane and by partition."""

    def __init__(self, name: str) -> None:
        self.name = name  # for the log: "courier <subscription id>"
        self.lanes: dict[Lane, deque[Held]] = {}
        self.watermarks: dict[int, Watermark] = {}
        self._committed: dict[int, int] = {}
        self._all_paused = False
        self._stuck: set[int] = set()  # partitions paused for a lane over LANE_CAP

    @property
    def pending(self) -> int:
        """Records read and not yet finished (held in memory)."""
        return sum(len(w.unfinished) for w in self.watermarks.values())

    def read(self, partition: int, offset: int) -> None:
        """Note offset `offset` of `partition` as read and unfinished."""
        self.watermarks.setdefault(partition, Watermark()).read(offset)

    def add(self, record: Held) -> tuple[Lane, deque[Held]]:
        """Queue `record` at the end of its lane; its lane and the lane's queue."""
        lane = (record.partition, record.key)
        queue = self.lanes.setdefault(lane, deque())
        queue.append(record)
        if len(queue) == LANE_CAP and record.partition not in self._stuck:
            self._stuck.add(record.partition)
            log.warning(
                "%s: one key holds %d records (its head not delivered yet):"
                " pausing partition %d until it drains to %d",
                self.name,
                len(queue),
                record.partition,
                LANE_CAP // 2,
            )
        return lane, queue

    def to_pause(self, assigned: Iterable[TopicPartition]) -> set[TopicPartition]:
        """Of `assigned`, the partitions that must wait: every one past `MAX_PENDING`, one whose
        lane holds `LANE_CAP`; each resumes at half."""
        held = self.pending
        if self._all_paused and held < MAX_PENDING // 2:
            self._all_paused = False
            log.info("%s: %d records held, reading again", self.name, held)
        elif not self._all_paused and held >= MAX_PENDING:
            self._all_paused = True
            log.warning("%s: %d records held unfinished: pausing every partition", self.name, held)
        if self._stuck:
            longest: Counter[int] = Counter()
            for (partition, _), queue in self.lanes.items():
                if partition in self._stuck:
                    longest[partition] = max(longest[partition], len(queue))
            for partition in [p for p in self._stuck if longest[p] < LANE_CAP // 2]:
                self._stuck.discard(partition)
                log.info("%s: partition %d reading again", self.name, partition)
        return {tp for tp in assigned if self._all_paused or tp.partition in self._stuck}

    def to_commit(self, topic: str) -> dict[TopicPartition, int]:
        """The offsets of `topic` to commit now: per partition its first unfinished offset,
        where that moved since the last commit."""
        offsets = {}
        for partition, mark in self.watermarks.items():
            committable = mark.committable
            if committable is not None and committable != self._committed.get(partition):
                offsets[TopicPartition(topic, partition)] = committable
        return offsets

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Note `offsets` as committed."""
        for tp, offset in offsets.items():
            self._committed[tp.partition] = offset

    def drop(self, partitions: set[int]) -> None:
        """Forget everything of `partitions` (revoked: their new owner delivers them again)."""
        for lane in [lane for lane in self.lanes if lane[0] in partitions]:
            self.lanes.pop(lane, None)
        for partition in partitions:
            self.watermarks.pop(partition, None)
            self._committed.pop(partition, None)
            self._stuck.discard(partition)
