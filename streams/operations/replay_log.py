"""The replays topic: every replay's state, and which API process runs it (its lease).

`gemeentebus.replays` is compacted, one partition, key = the replay id, value = the JSON of a
`ReplayStatus`. Each status names its `owner` (one `Replayer`, i.e. one process) and the
time its lease on the replay runs out (`lease_until`): the owner writes the status again
(a checkpoint, or a renewal of the last checkpoint) well before that. Every process follows
the topic with a `ReplayLog`, and all of them apply one rule, `supersedes`, in the topic's
order, so all agree on the owner:

- nothing changes a replay that is done or failed;
- a status written by the current owner (or for a replay nobody owns yet) counts;
- a status written by another process counts only if it was written after the current
  lease ran out (its own `saved_at` >= the current `lease_until`): that is a claim.

A process that was paused past its lease and writes again is thereby ignored; when it reads
the claim that replaced it, it stops (its records written meanwhile are duplicates, which
at-least-once allows). Two processes run one replay at the same time at most for one lease
renewal interval, never for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streams.config import Settings
from streams.exceptions import KafkaUnavailable
from streams.kafka.clients import Producer
from streams.kafka.topics import Topics, partitions
from streams.kafka.window import consumer
from streams.retry import REPLAY_READ

__all__ = ["ReplayLog", "ReplayStatus", "State", "supersedes"]

log = logging.getLogger(__name__)

State = Literal["queued", "running", "done", "failed"]
UNFINISHED: tuple[State, ...] = ("queued", "running")


class ReplayStatus(BaseModel):
    """One replay as persisted in the replays topic (and answered over HTTP)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    subscription: str
    request: dict[str, Any]
    requested_by: str
    requested_at: datetime
    state: State = "queued"
    error: str | None = None
    scanned: int = 0
    matched: int = 0
    written: int = 0
    total: int = 0  # records in the window (the scan's length)
    starts: dict[str, int] = Field(default_factory=dict)  # "topic:partition" -> first offset
    ends: dict[str, int] = Field(default_factory=dict)  # "topic:partition" -> end (exclusive)
    positions: dict[str, int] = Field(default_factory=dict)  # next offset to read
    started_at: datetime | None = None
    finished_at: datetime | None = None
    owner: str | None = None  # the process running it (no owner: anyone may take it)
    saved_at: datetime | None = None  # when its owner wrote this status
    lease_until: datetime | None = None  # unrenewed until then: another process may take it

    @property
    def unfinished(self) -> bool:
        return self.state in UNFINISHED

    def expired(self, now: datetime) -> bool:
        """Whether another process may take this (unfinished) replay over at `now`."""
        return self.lease_until is None or self.lease_until <= now

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None before there is a rate."""
        if self.state != "running" or self.started_at is None or self.scanned == 0:
            return None if self.state != "done" else 0.0
        elapsed = (datetime.now(UTC) - self.started_at).total_seconds()
        return max(self.total - self.scanned, 0) * elapsed / self.scanned

    def public_dict(self) -> dict[str, Any]:
        out = self.model_dump(mode="json", exclude={"starts", "ends", "saved_at", "lease_until"})
        out["etaSeconds"] = self.eta_s()
        return out


def supersedes(current: ReplayStatus | None, new: ReplayStatus) -> bool:
    """Whether `new`, read after `current` in the replays topic, takes effect."""
    if current is None:
        return True
    if not current.unfinished:
        return False
    if new.owner == current.owner:
        return True
    return new.saved_at is not None and current.expired(new.saved_at)


class ReplayLog:
    """Follows the replays topic: the statuses in effect, and who owns each replay.

    `start()` reads what is there and keeps following; `stop()` after. `lost` is called
    (in the reader task) with a replay's id when a status of another owner takes effect.
    """

    def __init__(self, settings: Settings, producer: Producer) -> None:
        self.settings, self.producer = settings, producer
        self.topic = Topics(settings.kafka.topic_prefix).replays
        self.statuses: dict[str, ReplayStatus] = {}
        self.changed = asyncio.Condition()
        self.lost: list[Any] = []  # callbacks: (replay id, the status now in effect)
        self._reader: AIOKafkaConsumer = consumer(self.settings)
        self._applied: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def _partitions(self) -> list[TopicPartition]:
        """The replays topic's partitions, once the cluster's metadata has them: a topic
        created a moment ago may not be visible yet (`KafkaUnavailable` naming it if it
        stays missing for `kafka.request_timeout_s`)."""
        deadline = time.monotonic() + self.settings.kafka.request_timeout_s
        while not (tps := await partitions(self.settings.kafka, [self.topic])):
            if time.monotonic() >= deadline:
                raise KafkaUnavailable(
                    f"topic {self.topic} does not exist: run `gemeentebus topics create`"
                )
            await asyncio.sleep(0.2)
        return tps

    async def start(self) -> None:
        await self._reader.start()
        try:
            tps = await self._partitions()
            self._reader.assign(tps)
            await self._reader.seek_to_beginning(*tps)
            for tp in tps:
                self._applied[tp] = await self._reader.position(tp)
            ends = await self._reader.end_offsets(tps)
        except BaseException:
            await self._reader.stop()
            raise
        self._task = asyncio.create_task(self._follow(), name="replays-reader")
        await self.applied({tp: int(offset) for tp, offset in ends.items()})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._reader.stop()

    async def send(self, status: ReplayStatus) -> asyncio.Future[dict[TopicPartition, int]]:
        """Queue a status for the topic (in call order); the future gives, once the broker has
        it, the offsets to wait `applied` for."""
        value = status.model_dump_json().encode()
        sent = await self.producer.send(self.topic, value, key=status.id.encode())

        async def confirmed() -> dict[TopicPartition, int]:
            meta = await sent
            return {TopicPartition(meta.topic, meta.partition): meta.offset + 1}

        return asyncio.ensure_future(confirmed())

    async def applied(self, targets: dict[TopicPartition, int]) -> None:
        """Return once the reader has applied every record before these offsets."""

        def reached() -> bool:
            if self._task is not None and self._task.done():
                raise RuntimeError("the replays reader stopped")
            return all(self._applied.get(tp, 0) >= o for tp, o in targets.items())

        async with self.changed:
            await self.changed.wait_for(reached)

    async def _follow(self) -> None:
        try:
            await self._read()
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("the replays reader stopped")
            async with self.changed:
                self.changed.notify_all()
            raise

    async def _read(self) -> None:
        attempt = 0
        while True:
            try:
                batches = await self._reader.getmany(timeout_ms=200, max_records=1000)
            except Exception as exc:
                if not REPLAY_READ.retries(exc, elapsed_s=0.0):
                    raise
                attempt += 1
                log.warning("reading replays failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(REPLAY_READ.delay(attempt))
                continue
            attempt = 0
            for records in batches.values():
                for record in records:
                    self._apply(record)
            async with self.changed:
                for tp in self._applied:
                    self._applied[tp] = await self._reader.position(tp)
                self.changed.notify_all()

    def _apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        replay_id = bytes(record.key or b"").decode("utf-8", "replace")
        if record.value is None:
            self.statuses.pop(replay_id, None)
            return
        try:
            new = ReplayStatus.model_validate_json(record.value)
        except ValidationError as exc:
            log.error(
                "skipped an unreadable replay status at offset %d (%s)",
                record.offset,
                type(exc).__name__,
            )
            return
        current = self.statuses.get(new.id)
        if not supersedes(current, new):
            return
        self.statuses[new.id] = new
        if current is not None and current.owner != new.owner:
            for callback in self.lost:
                callback(new.id, new)
