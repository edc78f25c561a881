"""What a courier holds: the records read and not finished, and per partition the offsets.

`held` makes the courier's record of a client's record and never raises: every record is
converted by `read_record`, and one that is no event the courier can send (a null or
non-bytes header value, a header that is not UTF-8, a value over the size limit, a value
that is not a UTF-8 JSON CloudEvent) is held with its `problem`, to be dead-lettered byte
for byte, null header values included.

`Holding` is one courier's bookkeeping: its records split into lanes by (partition, key),
each lane in offset order (a record without a key is its partition's null lane), the
offsets of each partition (`connectors.offsets.Watermark`), the offsets committed, and the
back-pressure and seeks that asks for. A courier holds at most `MAX_PENDING` unfinished
records; past that it pauses every partition until half have finished. A lane (one key)
holds at most `LANE_CAP` records: past that its records are *spilled*, left in Kafka and
read again once the lane has drained to half (`connectors.offsets`), so one key that keeps
failing holds back no other key, and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import TopicPartition

from connectors.offsets import SPILL_CAP, Offer, Watermark
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
    "held",
    "poison",
    "unsendable",
    "window_start",
]

log = logging.getLogger(__name__)

MAX_PENDING: Final = 2000  # unfinished records held per courier before it pauses everything
LANE_CAP: Final = 500  # records one lane (key) holds in memory; more are spilled

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
        self._full: set[int] = set()  # partitions paused for SPILL_CAP spilled offsets

    @property
    def pending(self) -> int:
        """Records read and not yet finished (held in memory)."""
        return sum(w.pending for w in self.watermarks.values())

    @property
    def spilled(self) -> int:
        """Records left in Kafka behind a full lane, to be read again."""
        return sum(w.spilled_count for w in self.watermarks.values())

    @property
    def quiet(self) -> bool:
        """Nothing held, spilled or to seek, and every offset read committed: nothing for
        back-pressure or a commit to do."""
        return all(
            not mark.pending
            and not mark.spilled_count
            and mark.until is None
            and not mark.seek_wanted
            and mark.committable == self._committed.get(partition)
            for partition, mark in self.watermarks.items()
        )

    def offer(self, partition: int, offset: int, key: bytes | None) -> Offer:
        """Whether to hold the record of lane (`partition`, `key`) at `offset` just fetched
        (`Offer.HOLD`: then `add` it), to leave it in Kafka for now, or to skip it."""
        mark = self.watermarks.setdefault(partition, Watermark())
        was_spilling = mark.spilled_count > 0
        lane_full = len(self.lanes.get((partition, key), ())) >= LANE_CAP
        offer = mark.offer(offset, key, lane_full)
        if offer is Offer.SPILL and not was_spilling:
            log.warning(
                "%s: a key of partition %d holds %d records (its head not delivered yet):"
                " its later records stay in Kafka, to be read again once it drains to %d;"
                " the other keys go on",
                self.name,
                partition,
                LANE_CAP,
                LANE_CAP // 2,
            )
        if mark.vanished:
            log.error(
                "%s: %d records of partition %d were deleted by the topic's retention"
                " before they could be read again: they are lost (retention too short for"
                " the retry window)",
                self.name,
                mark.vanished,
                partition,
            )
            mark.vanished = 0
        return offer

    def add(self, record: Held) -> tuple[Lane, deque[Held]]:
        """Queue `record` (offered `Offer.HOLD`) at the end of its lane; its lane and queue."""
        lane = (record.partition, record.key)
        queue = self.lanes.setdefault(lane, deque())
        queue.append(record)
        return lane, queue

    def to_pause(self, assigned: Iterable[TopicPartition]) -> set[TopicPartition]:
        """Of `assigned`, the partitions that must wait: every one past `MAX_PENDING` (until
        half have finished), one with `SPILL_CAP` offsets spilled (until a re-read)."""
        held = self.pending
        if self._all_paused and held < MAX_PENDING // 2:
            self._all_paused = False
            log.info("%s: %d records held, reading again", self.name, held)
        elif not self._all_paused and held >= MAX_PENDING:
            self._all_paused = True
            log.warning("%s: %d records held unfinished: pausing every partition", self.name, held)
        for partition, mark in self.watermarks.items():
            full = mark.spilled_count >= SPILL_CAP and mark.until is None
            if full and partition not in self._full:
                log.warning(
                    "%s: %d records of partition %d left in Kafka behind full lanes:"
                    " pausing it until they are read again",
                    self.name,
                    mark.spilled_count,
                    partition,
                )
                self._full.add(partition)
            elif not full:
                self._full.discard(partition)
        return {tp for tp in assigned if self._all_paused or tp.partition in self._full}

    def to_seek(self, assigned: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Of `assigned`, the partitions to seek now, and where: back to the first spilled
        offset once a spilled key's lane has drained to half; forward again after the last."""
        seeks = {}
        for tp in assigned:
            mark = self.watermarks.get(tp.partition)
            if mark is None:
                continue
            offset = mark.take_seek()
            if offset is None and any(
                len(self.lanes.get((tp.partition, key), ())) <= LANE_CAP // 2
                for key in mark.spilled_keys
            ):
                offset = mark.reread()
                if offset is not None:
                    log.info(
                        "%s: reading %d records of partition %d again from offset %d",
                        self.name,
                        mark.spilled_count,
                        tp.partition,
                        offset,
                    )
            if offset is not None:
                seeks[tp] = offset
        return seeks

    def to_commit(self, topic: str) -> dict[TopicPartition, int]:
        """The offsets of `topic` to commit now: per partition its first unfinished (or
        spilled) offset, where that moved since the last commit."""
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
            self._full.discard(partition)
