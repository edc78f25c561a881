"""The courier: one HTTP subscription's deliver topic, pushed to its webhook.

Each `Courier` has its own lanes, attempts and HTTP session, and takes its records from the
process's `Reader` (`connectors.reader`: one consumer in the delivery group for every
subscription), which pauses only the partitions of a courier that cannot hold more: a slow
or dead subscriber holds up only its own courier. The `Dispatcher`
(`connectors.dispatcher`) runs one per active HTTP subscription.

Order, within one courier: records are split into lanes by (partition, key)
(`connectors.holding`). A lane delivers strictly in offset order: a record is attempted only
after the one before it in its lane was delivered or dead-lettered, so a retrying event
holds back the later events of its key and nothing else. Lanes of different keys run
concurrently, at most `connectors.attempts.CONCURRENCY` requests at a time.

Reading: a record that is no event the courier can send (`connectors.holding`) is
dead-lettered byte for byte when its turn in its lane comes, without an attempt, with the
reason as its error; the records around it are delivered.

Offsets: per partition, the committed offset is the lowest offset not yet finished
(delivered or dead-lettered, with the broker holding every delivery-log and DLQ write about
it; `connectors.writes` retries a write until it lands). A crash therefore re-delivers what
was in flight and what finished above a gap: at least once, deduped by the subscriber on
`source`+`id` (or `webhook-id`).

Back-pressure: at most `MAX_PENDING` unfinished records, at most `LANE_CAP` held in one lane;
a full lane's later records are left in Kafka and read again (`connectors.offsets`).
Attempts, retries and dead letters: `connectors.attempts`, asking `streams.retry`. A
`410 Gone` stops the courier and calls `on_gone`: the dispatcher retires the subscription;
the undelivered records stay in the deliver topic (uncommitted, not dead-lettered:
reactivating the subscription resumes there).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from connectors.attempts import Attempts, pause
from connectors.endpoints import Endpoints
from connectors.holding import Held, Holding, Lane, held, poison, window_start
from connectors.offsets import Offer, Watermark
from connectors.webhook import SubscriberGone
from connectors.writes import Write
from streams.config import Settings
from streams.contract.record import read_record
from streams.exceptions import FieldError
from streams.health import Health, Progress
from streams.kafka.clients import Producer
from streams.kafka.topics import Topics
from streams.retry import LANE_BUG
from streams.routing.subscriptions import Subscription

if TYPE_CHECKING:
    from connectors.reader import Reader

__all__ = ["STOP_DEADLINE_S", "Courier"]

log = logging.getLogger(__name__)

STOP_DEADLINE_S: Final = 10.0  # how long `stop` takes at most
_CLOSE_RESERVE_S: Final = 1.0  # of a stop's deadline, kept for the final commit


class Courier:
    """Delivers one HTTP subscription's deliver topic to its webhook, as `reader` reads it."""

    def __init__(
        self,
        settings: Settings,
        subscription: Subscription,
        producer: Producer,
        counts: Counter[str],
        *,
        reader: Reader,
        endpoints: Endpoints | None = None,
        health: Health | None = None,
        on_gone: Callable[[Courier], None] | None = None,
    ) -> None:
        self.settings = settings
        self.subscription = subscription
        self.topics = Topics(settings.kafka.topic_prefix)
        self.topic = self.topics.deliver(subscription.id)
        self.counts = counts  # outcome -> how many (attempts for `retry`)
        self._delivery = settings.delivery
        self._reader = reader
        self._on_gone = on_gone
        self._health = health
        self._part_name = f"courier {subscription.id}"
        self._progress: Progress | None = (
            health.part("delivery", self._part_name) if health is not None else None
        )
        self._troubles: dict[str, str] = {}  # what makes the courier broken, by cause
        self._stopping = asyncio.Event()
        self._attempts = Attempts(
            settings,
            subscription,
            producer,
            counts,
            stopping=self._stopping,
            gone=self._gone,
            trouble=self._trouble,
            endpoints=endpoints,
        )
        self._holding = Holding(f"courier {subscription.id}")
        self._lane_tasks: dict[Lane, asyncio.Task[None]] = {}
        self._halts: dict[int, asyncio.Event] = {}  # set: that partition's lanes stop
        self._stop_by = 0.0  # loop time by which `stop` is to be done
        self._stop_task: asyncio.Task[None] | None = None
        self._started = time.monotonic()  # no record's retry window begins before this
        self.retired = False

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Take the records of the subscription's deliver topic from the reader."""
        self._reader.attach(self)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def stop(self, deadline_s: float = STOP_DEADLINE_S) -> None:
        """Stop taking records, let attempts and writes in flight finish, commit what is
        finished: all within `deadline_s`, whatever the subscriber or the broker do. What
        did not finish stays uncommitted, to be delivered again. A second call with a
        shorter deadline hurries the first."""
        loop = asyncio.get_running_loop()
        by = loop.time() + deadline_s
        self._stop_by = by if self._stop_task is None else min(self._stop_by, by)
        self._stop_all()
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(), name=f"stop-{self.subscription.id}")
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        loop = asyncio.get_running_loop()
        reserve = min(_CLOSE_RESERVE_S, max(0.0, self._stop_by - loop.time()) / 4)
        await self._cancel_late(set(self._lane_tasks.values()), reserve)
        await self._cancel_late(set(self._attempts.writes), reserve)
        try:
            async with asyncio.timeout(max(0.05, self._stop_by - loop.time())):
                self.committed(await self._reader.commit(self.to_commit()))
        except (KafkaError, TimeoutError) as exc:
            log.warning(
                "courier %s: final commit failed (%s)", self.subscription.id, type(exc).__name__
            )
        self._reader.detach(self)
        await self._attempts.close()
        if self._health is not None:
            self._health.drop("delivery", self._part_name)

    def _stop_all(self) -> None:
        self._stopping.set()
        for halt in self._halts.values():
            halt.set()

    def _halt(self, partition: int) -> asyncio.Event:
        """Set when the lanes of `partition` are to stop (the courier stops, or the
        partition is revoked)."""
        halt = self._halts.get(partition)
        if halt is None:
            halt = self._halts[partition] = asyncio.Event()
            if self._stopping.is_set():
                halt.set()
        return halt

    async def _cancel_late(self, tasks: set[asyncio.Task[Any]], reserve: float) -> None:
        """Wait for `tasks` until the stop deadline less `reserve`, then cancel the rest."""
        loop = asyncio.get_running_loop()
        pending = {t for t in tasks if not t.done()}
        while pending:
            left = self._stop_by - reserve - loop.time()
            if left <= 0:
                break
            _, pending = await asyncio.wait(pending, timeout=min(left, 0.1))  # re-read deadline
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    def update(self, subscription: Subscription) -> None:
        """Use a changed subscription (sink, credential, secret) from the next attempt on."""
        if subscription == self.subscription:
            return
        self.subscription = subscription
        self._attempts.update(subscription)

    @property
    def pending(self) -> int:
        """Records read and not yet finished (held in memory)."""
        return self._holding.pending

    @property
    def paused(self) -> frozenset[int]:
        """The partitions not being read now (back-pressure)."""
        return self._reader.paused(self.topic)

    @property
    def idle(self) -> bool:
        """Nothing held, spilled or uncommitted: nothing to pause, seek or commit."""
        return self._holding.quiet

    def _trouble(self, cause: str, reason: str | None) -> None:
        if reason is None:
            self._troubles.pop(cause, None)
        else:
            self._troubles[cause] = reason
        if self._progress is not None:
            if self._troubles:
                self._progress.broken("; ".join(sorted(self._troubles.values())))
            else:
                self._progress.mended()

    # -- what the reader asks -----------------------------------------------------------

    def back_pressure(
        self, assigned: list[TopicPartition]
    ) -> tuple[dict[TopicPartition, int], set[TopicPartition]]:
        """Of `assigned` (partitions of this topic): where to seek now (spilled records read
        again, `Holding.to_seek`), and which must wait (`Holding.to_pause`)."""
        return self._holding.to_seek(assigned), self._holding.to_pause(assigned)

    def report(self) -> None:
        """Tell the health part how many records wait."""
        if self._progress is not None:
            self._progress.waiting(self._lag())

    def _lag(self) -> int:
        """Records waiting for this courier: held unfinished, spilled, plus known unread (from
        the high watermark of the last fetch)."""
        lag = self.pending + self._holding.spilled
        for partition, mark in self._holding.watermarks.items():
            high = self._reader.highwater(TopicPartition(self.topic, partition))
            if high is not None and mark.next_offset is not None:
                lag += max(0, high - mark.next_offset)
        return lag

    def take(self, partition: int, message: Any) -> None:
        """Hold a record just read (or leave it in Kafka, `Holding.offer`); never raises."""
        read = read_record(
            message.key, message.headers, message.value, max_bytes=self._delivery.max_body_bytes
        )
        if self._holding.offer(partition, message.offset, read.key) is not Offer.HOLD:
            return  # spilled (read again later) or held before
        since = window_start(
            getattr(message, "timestamp", None),
            started=self._started,
            now=time.monotonic(),
            wall_now=time.time(),
        )
        try:
            record = held(partition, message.offset, read, since)
        except Exception:  # a bug: the record is dead-lettered with why, never skipped
            log.exception("courier %s: reading a record failed", self.subscription.id)
            error = FieldError("record", "internal_error", "the courier could not read it")
            record = poison(partition, message.offset, read, error, since)
        if record.problem is not None:
            log.warning(
                "subscription %s: record %d/%d is no event to send (%s): dead-lettering it",
                self.subscription.id,
                partition,
                message.offset,
                record.problem.code,
            )
        lane, queue = self._holding.add(record)
        if lane not in self._lane_tasks:
            self._lane_tasks[lane] = asyncio.create_task(self._lane(lane, queue))

    def to_commit(self) -> dict[TopicPartition, int]:
        """Per partition read, the lowest unfinished offset, where it moved since the last
        commit."""
        return self._holding.to_commit(self.topic)

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Note those of `offsets` that are this topic's as committed."""
        self._holding.committed({tp: o for tp, o in offsets.items() if tp.topic == self.topic})

    def restart_offset(self, partition: int) -> int | None:
        """Where reading `partition` must start again for nothing unfinished to be missed
        (None: nothing read from it)."""
        mark = self._holding.watermarks.get(partition)
        return None if mark is None else mark.committable

    async def drain(self, partitions: set[int], grace_s: float) -> None:
        """Before `partitions` go to another group member: their lanes start nothing new,
        an attempt in flight may finish (and its writes land) within `grace_s`, so that
        what reached the subscriber is committed, not delivered again by the new owner."""
        for partition in partitions:
            self._halt(partition).set()
        lanes = {t for lane, t in self._lane_tasks.items() if lane[0] in partitions}
        loop = asyncio.get_running_loop()
        by = loop.time() + grace_s
        if lanes:
            _, late = await asyncio.wait(lanes, timeout=grace_s)
            for task in late:
                task.cancel()
        settling = {t for t in self._attempts.writes if not t.done()}  # finished records' too
        if settling:
            await asyncio.wait(settling, timeout=max(0.0, by - loop.time()))

    def revoked(self, partitions: set[int]) -> None:
        """Another group member takes `partitions` over (their finished offsets were
        committed): their lanes stop, what they held is dropped; the new owner delivers
        the unfinished records again."""
        for lane, task in list(self._lane_tasks.items()):
            if lane[0] in partitions:
                task.cancel()
                self._lane_tasks.pop(lane, None)
        for partition in partitions:
            self._halts.pop(partition, None)  # a new assignment starts afresh
        self._holding.drop(partitions)

    # -- delivering ---------------------------------------------------------------------

    async def _lane(self, lane: Lane, queue: deque[Held]) -> None:
        bugs = 0
        halt = self._halt(lane[0])
        try:
            while queue and not halt.is_set():
                record = queue[0]
                try:
                    done = await self._attempts.deliver(record, halt)
                except Exception:  # our own bug outside the attempt: retried, visibly
                    bugs += 1
                    log.exception("courier %s: a lane failed; retrying", self.subscription.id)
                    self._trouble("lane", "a lane failed with an internal error (see the log)")
                    await pause(halt, LANE_BUG.delay(bugs))
                    continue
                if not done:
                    return  # stopping or retired: the record stays uncommitted
                if bugs:
                    bugs = 0
                    self._trouble("lane", None)
                queue.popleft()
                self._finish(record)
        finally:
            if self._lane_tasks.get(lane) is asyncio.current_task():
                del self._lane_tasks[lane]
                if not queue:
                    self._holding.lanes.pop(lane, None)

    def _gone(self, record: Held, attempt: int, exc: SubscriberGone) -> None:
        if self.retired:
            return
        self.retired = True
        self._stop_all()
        self._attempts.log(record, "retired", attempt, status=exc.status, error=exc.code)
        log.warning("subscription %s answered 410 Gone: stopping delivery", self.subscription.id)
        if self._on_gone is not None:
            self._on_gone(self)

    def _finish(self, record: Held) -> None:
        """Mark the record finished once the broker has every write about it (callbacks on
        its writes, not a task per record: this runs per delivery)."""
        watermark = self._holding.watermarks.get(record.partition)
        waiting = [write for write in record.writes if not write.done()]
        if not waiting:
            self._settle(record, watermark)
            return
        left = len(waiting)

        def landed(_: asyncio.Task[Write]) -> None:
            nonlocal left
            left -= 1
            if left == 0:
                self._settle(record, watermark)

        for write in waiting:
            write.add_done_callback(landed)

    def _settle(self, record: Held, watermark: Watermark | None) -> None:
        """Every write about `record` is done: finished if each landed (a cancelled one:
        stopped, the record stays unfinished; a failed one is a bug, visible)."""
        for write in record.writes:
            if write.cancelled():
                return
            if write.exception() is not None:
                log.error(
                    "courier %s: finishing a record failed",
                    self.subscription.id,
                    exc_info=write.exception(),
                )
                self._trouble("settle", "finishing a record failed (see the log)")
                return
        # a revoked partition has a new watermark (or none): the old one is dropped
        if watermark is not None and watermark is self._holding.watermarks.get(record.partition):
            watermark.finish(record.offset)
            if self._progress is not None:
                self._progress.advanced()
