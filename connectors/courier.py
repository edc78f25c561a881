"""The courier: one HTTP subscription's deliver topic, pushed to its webhook.

Each `Courier` has its own consumer (group `<prefix>.deliver.<id>`, manual commits) and its
own HTTP session: a slow or dead subscriber holds up only its own courier. The `Dispatcher`
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
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from connectors.attempts import Attempts, pause
from connectors.holding import Held, Holding, Lane, held, poison, window_start
from connectors.offsets import Offer, Watermark
from connectors.webhook import SubscriberGone
from streams.config import Settings
from streams.contract.record import read_record
from streams.exceptions import FieldError
from streams.health import Health, Progress
from streams.kafka.clients import Producer, make_consumer
from streams.kafka.topics import Groups, Topics
from streams.retry import KAFKA_READ, LANE_BUG
from streams.routing.subscriptions import Subscription

__all__ = ["STOP_DEADLINE_S", "Courier"]

log = logging.getLogger(__name__)

_POLL_MS = 100
_COMMIT_EVERY_S = 0.5
STOP_DEADLINE_S: Final = 10.0  # how long `stop` takes at most
_CLOSE_RESERVE_S: Final = 1.0  # of a stop's deadline, kept for the commit and closing


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, courier: Courier) -> None:
        self._courier = courier

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._courier._revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        return None


class Courier:
    """Delivers one HTTP subscription's deliver topic to its webhook."""

    def __init__(
        self,
        settings: Settings,
        subscription: Subscription,
        producer: Producer,
        counts: Counter[str],
        *,
        health: Health | None = None,
        on_gone: Callable[[Courier], None] | None = None,
    ) -> None:
        self.settings = settings
        self.subscription = subscription
        self.topics = Topics(settings.kafka.topic_prefix)
        self.counts = counts  # outcome -> how many (attempts for `retry`)
        self._delivery = settings.delivery
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
        )
        self._consumer = make_consumer(
            settings,
            f"deliver-{subscription.id}",
            group=Groups(settings.kafka.topic_prefix).deliver(subscription.id),
            fetch_max_wait_ms=_POLL_MS,
            max_poll_records=500,
            metadata_max_age_ms=30_000,  # also notices partitions added later
        )
        self._holding = Holding(f"courier {subscription.id}")
        self._lane_tasks: dict[Lane, asyncio.Task[None]] = {}
        self._settling: set[asyncio.Task[None]] = set()  # records waiting for their writes
        self._stop_by = 0.0  # loop time by which `stop` is to be done
        self._stop_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = time.monotonic()  # no record's retry window begins before this
        self.retired = False

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group and start delivering."""
        await self._consumer.start()
        await self._topic_known()
        self._consumer.subscribe(
            [self.topics.deliver(self.subscription.id)], listener=_Rebalance(self)
        )
        self._task = asyncio.create_task(self._run(), name=f"courier-{self.subscription.id}")

    async def _topic_known(self) -> None:
        # A topic created a moment ago (a new subscription) may not be in the broker's
        # metadata yet; a group joined then gets no partitions until the next refresh.
        topic = self.topics.deliver(self.subscription.id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.kafka.request_timeout_s):
                while True:
                    if topic in await self._consumer.topics():
                        return
                    await asyncio.sleep(0.1)
        log.warning("topic %s is not known to the broker yet", topic)

    async def stop(self, deadline_s: float = STOP_DEADLINE_S) -> None:
        """Stop reading, let attempts and writes in flight finish, commit what is finished,
        close: all within `deadline_s`, whatever the subscriber or the broker do. What did
        not finish stays uncommitted, to be delivered again. A second call with a shorter
        deadline hurries the first."""
        loop = asyncio.get_running_loop()
        by = loop.time() + deadline_s
        self._stop_by = by if self._stop_task is None else min(self._stop_by, by)
        self._stopping.set()
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(), name=f"stop-{self.subscription.id}")
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        loop = asyncio.get_running_loop()
        reserve = min(_CLOSE_RESERVE_S, max(0.0, self._stop_by - loop.time()) / 4)
        if self._task is not None:
            await self._cancel_late({self._task}, reserve)
        await self._cancel_late(set(self._lane_tasks.values()), reserve)
        await self._cancel_late(set(self._settling), reserve)
        await self._cancel_late(set(self._attempts.writes), reserve)
        try:
            async with asyncio.timeout(max(0.05, (self._stop_by - loop.time()) / 2)):
                await self._commit()
        except (KafkaError, TimeoutError) as exc:
            log.warning(
                "courier %s: final commit failed (%s)", self.subscription.id, type(exc).__name__
            )
        try:
            async with asyncio.timeout(max(0.05, self._stop_by - loop.time())):
                await self._consumer.stop()
        except TimeoutError:
            log.warning("courier %s: the consumer did not close in time", self.subscription.id)
        await self._attempts.close()
        if self._health is not None:
            self._health.drop("delivery", self._part_name)

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
        return frozenset(tp.partition for tp in self._consumer.paused())

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

    # -- reading ------------------------------------------------------------------------

    async def _run(self) -> None:
        last_commit = time.monotonic()
        while not self._stopping.is_set():
            try:
                self._back_pressure()
                # getmany keeps the group membership alive even while paused
                batches = await self._consumer.getmany(timeout_ms=_POLL_MS)
                for tp, records in batches.items():
                    for message in records:
                        self._take(tp.partition, message)  # never raises
                if self._progress is not None:
                    self._progress.waiting(self._lag())
                if time.monotonic() - last_commit >= _COMMIT_EVERY_S:
                    await self._commit()
                    last_commit = time.monotonic()
            except KafkaError as exc:
                log.warning(
                    "courier %s: Kafka error (%s); retrying",
                    self.subscription.id,
                    type(exc).__name__,
                )
                if not KAFKA_READ.retriable(exc):  # e.g. not authorised: retried, and visible
                    reason = f"Kafka refuses reading or committing ({type(exc).__name__})"
                    self._trouble("reading", reason)
                await pause(self._stopping, KAFKA_READ.delay(1))
            except Exception:  # a bug here must not kill the courier: visible, retried
                log.exception("courier %s: reading failed; retrying", self.subscription.id)
                self._trouble("reading", "reading failed with an internal error (see the log)")
                await pause(self._stopping, KAFKA_READ.delay(1))
            else:
                self._trouble("reading", None)

    def _back_pressure(self) -> None:
        """Seek where spilled records are to be read again (`Holding.to_seek`), pause the
        partitions that must wait (`Holding.to_pause`), resume the others."""
        assigned = self._consumer.assignment()
        for tp, offset in self._holding.to_seek(assigned).items():
            self._consumer.seek(tp, offset)
        wanted = self._holding.to_pause(assigned)
        paused = self._consumer.paused()
        if wanted - paused:
            self._consumer.pause(*(wanted - paused))
        if paused - wanted:
            self._consumer.resume(*(paused - wanted))

    def _lag(self) -> int:
        """Records waiting for this courier: held unfinished, spilled, plus known unread (from
        the high watermark of the last fetch)."""
        lag = self.pending + self._holding.spilled
        for tp in self._consumer.assignment():
            mark = self._holding.watermarks.get(tp.partition)
            high = self._consumer.highwater(tp)
            if high is not None and mark is not None and mark.next_offset is not None:
                lag += max(0, high - mark.next_offset)
        return lag

    def _take(self, partition: int, message: Any) -> None:
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

    async def _commit(self) -> None:
        offsets = self._holding.to_commit(self.topics.deliver(self.subscription.id))
        if offsets:
            await self._consumer.commit(offsets)
            self._holding.committed(offsets)

    async def _revoked(self, revoked: list[TopicPartition]) -> None:
        # another group member takes these over: commit what is finished, drop the rest
        # (lanes of those partitions stop; the new owner delivers them again)
        with contextlib.suppress(KafkaError):
            await self._commit()
        gone = {tp.partition for tp in revoked}
        for lane, task in list(self._lane_tasks.items()):
            if lane[0] in gone:
                task.cancel()
                self._lane_tasks.pop(lane, None)
        self._holding.drop(gone)

    # -- delivering ---------------------------------------------------------------------

    async def _lane(self, lane: Lane, queue: deque[Held]) -> None:
        bugs = 0
        try:
            while queue and not self._stopping.is_set():
                record = queue[0]
                try:
                    done = await self._attempts.deliver(record)
                except Exception:  # our own bug outside the attempt: retried, visibly
                    bugs += 1
                    log.exception("courier %s: a lane failed; retrying", self.subscription.id)
                    self._trouble("lane", "a lane failed with an internal error (see the log)")
                    await pause(self._stopping, LANE_BUG.delay(bugs))
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
        self._stopping.set()
        self._attempts.log(record, "retired", attempt, status=exc.status, error=exc.code)
        log.warning("subscription %s answered 410 Gone: stopping delivery", self.subscription.id)
        if self._on_gone is not None:
            self._on_gone(self)

    def _finish(self, record: Held) -> None:
        """Mark the record finished once the broker has every write about it."""
        watermark = self._holding.watermarks.get(record.partition)
        task = asyncio.create_task(self._settle(record, watermark))
        self._settling.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a bug: visible, not silent
            log.error(
                "courier %s: finishing a record failed",
                self.subscription.id,
                exc_info=task.exception(),
            )
            self._trouble("settle", "finishing a record failed (see the log)")

    async def _settle(self, record: Held, watermark: Watermark | None) -> None:
        try:
            await asyncio.gather(*record.writes)
        except asyncio.CancelledError:
            for write in record.writes:  # stopped: the record stays unfinished
                write.cancel()
            raise
        # a revoked partition has a new watermark (or none): the old one is dropped
        if watermark is not None and watermark is self._holding.watermarks.get(record.partition):
            watermark.finish(record.offset)
            if self._progress is not None:
                self._progress.advanced()
