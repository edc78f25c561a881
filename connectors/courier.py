"""The courier: one HTTP subscription's deliver topic, pushed to its webhook.

Each `Courier` has its own consumer (group `<prefix>.deliver.<id>`, manual commits) and its
own HTTP session: a slow or dead subscriber holds up only its own courier. The `Dispatcher`
(`connectors.delivery`) runs one per active HTTP subscription.

Order, within one courier: records are split into lanes by (partition, key). A lane
delivers strictly in offset order: a record is attempted only after the one before it in
its lane was delivered or dead-lettered, so a retrying event holds back the later events
of its key and nothing else. Lanes of different keys run concurrently, at most
`CONCURRENCY` requests at a time. A record without a key is its partition's null lane.

Offsets: per partition, the committed offset is the lowest offset not yet finished
(delivered, or written to the DLQ, with its delivery-log record acknowledged by the broker).
A crash therefore re-delivers what was in flight and what finished above a gap: at least
once, deduped by the subscriber on `source`+`id` (or `webhook-id`).

Retries: exponential backoff with full jitter (`initial_backoff_s` doubling, capped at
`max_backoff_s`), or exactly `Retry-After` when a 429/503 names one, until `retry_window_s`
has passed; then the record goes to `deliver.<id>.dlq` unchanged plus error headers. The
window runs from when the courier read the record, which for the head of a lane is its
first attempt: records queued behind a retrying head age with it, so a subscriber that is
down longer than the window has its backlog dead-lettered after about one window, not one
window per event of a key. Every record gets at least one attempt; a `Retry-After` that
ends past the window dead-letters at once. A `410 Gone` retires the subscription: the courier stops,
and the undelivered records stay in the deliver topic (uncommitted, not dead-lettered:
the subscriber said it wants nothing more; reactivating the subscription resumes there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from connectors.webhook import SubscriberGone, WebhookFailed, WebhookSender
from streams.app import make_consumer
from streams.config import DeliverySettings, Settings
from streams.deliverylog import Outcome
from streams.dlq import EventRef, Headers, dead_letter_headers, event_ref, log_attempt
from streams.exceptions import KafkaUnavailable
from streams.store import SubscriptionStore
from streams.subscriptions import Subscription
from streams.topics import Topics

__all__ = ["CONCURRENCY", "KAFKA_RETRY_S", "MAX_PENDING", "STOP_DEADLINE_S", "Courier", "backoff"]

log = logging.getLogger(__name__)

CONCURRENCY: Final = 8  # concurrent requests per subscription (lanes of different keys)
MAX_PENDING: Final = 2000  # records read but not finished, per courier, before it pauses
_POLL_MS = 100
_COMMIT_EVERY_S = 0.5
KAFKA_RETRY_S: Final = 1.0  # wait before retrying a failed Kafka call
STOP_DEADLINE_S: Final = 10.0  # how long `stop` lets attempts in flight finish


def backoff(attempt: int, settings: DeliverySettings, rng: random.Random | None = None) -> float:
    """The wait after failed attempt `attempt` (1-based): full jitter over a capped exponential."""
    ceiling = min(settings.max_backoff_s, settings.initial_backoff_s * 2 ** (attempt - 1))
    return (rng or random).uniform(0, ceiling)


@dataclass(slots=True)
class _Record:
    partition: int
    offset: int
    key: bytes | None
    headers: Headers
    value: bytes
    ref: EventRef
    read_at: float  # monotonic; the retry window runs from here


@dataclass(slots=True)
class _Watermark:
    """The offsets of one partition between the committed one and the last one read."""

    committable: int | None = None  # next offset to commit (all below are finished)
    pending: deque[int] = field(default_factory=deque)  # read, in order
    finished: set[int] = field(default_factory=set)

    def read(self, offset: int) -> None:
        if self.committable is None:
            self.committable = offset
        self.pending.append(offset)

    def finish(self, offset: int) -> None:
        self.finished.add(offset)
        while self.pending and self.pending[0] in self.finished:
            done = self.pending.popleft()
            self.finished.discard(done)
            self.committable = done + 1


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
        store: SubscriptionStore,
        producer: AIOKafkaProducer,
        counts: Counter[str],
    ) -> None:
        self.settings = settings
        self.subscription = subscription
        self.topics = Topics(settings.kafka.topic_prefix)
        self.counts = counts  # outcome -> how many (attempts for `retry`)
        self._delivery = settings.delivery
        self._store = store
        self._producer = producer
        self._sender = WebhookSender(subscription, settings.delivery, connections=CONCURRENCY)
        self._old_senders: list[WebhookSender] = []
        self._consumer = make_consumer(
            settings,
            f"deliver-{subscription.id}",
            group=f"{settings.kafka.topic_prefix}.deliver.{subscription.id}",
            fetch_max_wait_ms=_POLL_MS,
            max_poll_records=500,
            metadata_max_age_ms=30_000,  # also notices partitions added later
        )
        self._requests = asyncio.Semaphore(CONCURRENCY)
        self._lanes: dict[tuple[int, bytes | None], deque[_Record]] = {}
        self._lane_tasks: dict[tuple[int, bytes | None], asyncio.Task[None]] = {}
        self._watermarks: dict[int, _Watermark] = {}
        self._committed: dict[int, int] = {}
        self._writes: set[asyncio.Future[bool]] = set()  # DLQ / log writes not yet confirmed
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
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
        """Stop reading, let attempts in flight finish (up to `deadline_s`), commit, close."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        lanes = list(self._lane_tasks.values())
        if lanes:
            _, late = await asyncio.wait(lanes, timeout=deadline_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        writes = list(self._writes)
        if writes:
            await asyncio.wait(writes, timeout=deadline_s)
        with contextlib.suppress(KafkaError):
            await self._commit()
        await self._consumer.stop()
        for sender in (*self._old_senders, self._sender):
            await sender.close()

    def update(self, subscription: Subscription) -> None:
        """Use a changed subscription (sink, credential, secret) from the next attempt on."""
        if subscription == self.subscription:
            return
        # attempts in flight still use the old session: it is closed by `stop`
        self._old_senders.append(self._sender)
        self.subscription = subscription
        self._sender = WebhookSender(subscription, self._delivery, connections=CONCURRENCY)

    @property
    def pending(self) -> int:
        """Records read and not yet finished."""
        return sum(len(w.pending) for w in self._watermarks.values())

    # -- reading ------------------------------------------------------------------------

    async def _run(self) -> None:
        last_commit = time.monotonic()
        paused = False
        while not self._stopping.is_set():
            try:
                assigned = self._consumer.assignment()
                if not paused and self.pending >= MAX_PENDING:
                    self._consumer.pause(*assigned)
                    paused = True
                elif paused and self.pending < MAX_PENDING // 2:
                    self._consumer.resume(*assigned)
                    paused = False
                # getmany keeps the group membership alive even while paused
                batches = await self._consumer.getmany(timeout_ms=_POLL_MS)
                for tp, records in batches.items():
                    for message in records:
                        self._take(tp.partition, message)
                if time.monotonic() - last_commit >= _COMMIT_EVERY_S:
                    await self._commit()
                    last_commit = time.monotonic()
            except KafkaError as exc:
                log.warning(
                    "courier %s: Kafka error (%s); retrying",
                    self.subscription.id,
                    type(exc).__name__,
                )
                await self._pause(KAFKA_RETRY_S)
            except Exception:  # reading must outlive a bug in one record's handling
                log.exception("courier %s: reading failed; retrying", self.subscription.id)
                await self._pause(KAFKA_RETRY_S)

    def _take(self, partition: int, message: Any) -> None:
        headers = tuple((str(k), bytes(v)) for k, v in message.headers or ())
        value = bytes(message.value or b"")
        record = _Record(
            partition=partition,
            offset=message.offset,
            key=message.key,
            headers=headers,
            value=value,
            ref=event_ref(message.key, headers, value),
            read_at=time.monotonic(),
        )
        self._watermarks.setdefault(partition, _Watermark()).read(message.offset)
        lane = (partition, message.key)
        queue = self._lanes.setdefault(lane, deque())
        queue.append(record)
        if lane not in self._lane_tasks:
            task = asyncio.create_task(self._lane(lane, queue))
            self._lane_tasks[lane] = task

    async def _commit(self) -> None:
        offsets = {}
        for partition, mark in self._watermarks.items():
            if mark.committable is not None and mark.committable != self._committed.get(partition):
                offsets[TopicPartition(self.topics.deliver(self.subscription.id), partition)] = (
                    mark.committable
                )
        if offsets:
            await self._consumer.commit(offsets)
            for tp, offset in offsets.items():
                self._committed[tp.partition] = offset

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
                self._lanes.pop(lane, None)
        for partition in gone:
            self._watermarks.pop(partition, None)
            self._committed.pop(partition, None)

    # -- delivering ---------------------------------------------------------------------

    async def _lane(self, lane: tuple[int, bytes | None], queue: deque[_Record]) -> None:
        try:
            while queue and not self._stopping.is_set():
                try:
                    if not await self._deliver(queue[0]):
                        return  # stopping or retired: the record stays uncommitted
                except Exception:  # a bug must not stall the key: retry it
                    # The record stays at the head of its lane, uncommitted, and is tried again.
                    log.exception("courier %s: delivering failed; retrying", self.subscription.id)
                    await self._pause(KAFKA_RETRY_S)
                    continue
                queue.popleft()
        finally:
            if self._lane_tasks.get(lane) is asyncio.current_task():
                del self._lane_tasks[lane]
                if not queue:
                    self._lanes.pop(lane, None)

    async def _deliver(self, record: _Record) -> bool:
        """Deliver one record or dead-letter it; False when stopped before either."""
        attempt = 0
        while not self._stopping.is_set():
            attempt += 1
            async with self._requests:
                if self._stopping.is_set():
                    return False
                try:
                    status = await self._sender.send(
                        record.value, source=record.ref.source, event_id=record.ref.id
                    )
                except SubscriberGone as exc:
                    await self._retire(record, attempt, exc)
                    return False
                except WebhookFailed as exc:
                    failure = exc
                else:
                    self._finish(record, self._log(record, "delivered", attempt, status=status))
                    return True
            delay = (
                failure.retry_after
                if failure.retry_after is not None
                else backoff(attempt, self._delivery)
            )
            left = self._delivery.retry_window_s - (time.monotonic() - record.read_at)
            if left <= 0 or (failure.retry_after is not None and delay > left):
                await self._dead_letter(record, attempt, failure)
                return True
            self._track(_confirmed(self._log(record, "retry", attempt, failure=failure)))
            log.info(
                "subscription %s, event %s: attempt %d failed (%s); next in %.2fs",
                self.subscription.id,
                record.ref.id,
                attempt,
                failure.code,
                min(delay, left),
            )
            await self._pause(min(delay, left))  # the last attempt falls at the window's end
        return False

    async def _dead_letter(self, record: _Record, attempt: int, failure: WebhookFailed) -> None:
        headers = dead_letter_headers(
            record.headers, error=failure.code, detail=str(failure), attempts=attempt
        )
        written = await self._send(
            self.topics.dlq(self.subscription.id), record.value, record.key, headers
        )
        logged = self._log(record, "dead_lettered", attempt, failure=failure)
        log.warning(
            "subscription %s, event %s: dead-lettered after %d attempts (%s)",
            self.subscription.id,
            record.ref.id,
            attempt,
            failure.code,
        )
        self._finish(record, written, logged)

    async def _retire(self, record: _Record, attempt: int, exc: SubscriberGone) -> None:
        if self.retired:
            return
        self.retired = True
        self._stopping.set()
        self._track(_confirmed(self._log(record, "retired", attempt, failure=exc)))
        log.warning("subscription %s answered 410 Gone: retiring it", self.subscription.id)
        current = self._store.get(self.subscription.id) or self.subscription
        if current.active:
            try:
                await self._store.put(current.retired())
            except (KafkaError, KafkaUnavailable):
                log.exception("subscription %s could not be retired", self.subscription.id)

    # -- writing to Kafka ---------------------------------------------------------------

    def _log(
        self,
        record: _Record,
        outcome: Outcome,
        attempt: int,
        *,
        status: int | None = None,
        failure: WebhookFailed | None = None,
    ) -> asyncio.Future[Any]:
        self.counts[outcome] += 1
        return asyncio.ensure_future(
            log_attempt(
                self._producer,
                self.topics,
                subscription=self.subscription.id,
                purpose=self.subscription.purpose,
                ref=record.ref,
                outcome=outcome,
                attempt=attempt,
                status=status if failure is None else failure.status,
                error=None if failure is None else failure.code,
            )
        )

    async def _send(
        self, topic: str, value: bytes, key: bytes | None, headers: Headers
    ) -> asyncio.Future[Any]:
        while True:
            try:
                future: asyncio.Future[Any] = await self._producer.send(
                    topic, value, key=key, headers=list(headers)
                )
                return future
            except KafkaError as exc:
                log.warning("writing to %s failed (%s); retrying", topic, type(exc).__name__)
                await asyncio.sleep(KAFKA_RETRY_S)

    def _track(self, work: Awaitable[bool]) -> None:
        """Keep Kafka writes until the broker confirms them (`stop` waits for these)."""
        task = asyncio.ensure_future(work)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _finish(self, record: _Record, *sendings: asyncio.Future[Any]) -> None:
        """Mark the record finished once the broker has every write about it."""
        self._track(self._settle(record, self._watermarks.get(record.partition), sendings))

    async def _settle(
        self, record: _Record, watermark: _Watermark | None, sendings: Iterable[asyncio.Future[Any]]
    ) -> bool:
        confirmed = await asyncio.gather(*(_confirmed(s) for s in sendings))
        # a revoked partition has a new watermark (or none): the old one is dropped
        current = self._watermarks.get(record.partition)
        if all(confirmed) and watermark is not None and watermark is current:
            watermark.finish(record.offset)
        return all(confirmed)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when the courier stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


async def _confirmed(sending: asyncio.Future[Any]) -> bool:
    """Whether a send (a future of the producer's future) reached the broker."""
    try:
        result = await sending
        if isinstance(result, asyncio.Future):
            await result
    except (KafkaError, OSError) as exc:
        log.error("a delivery write was not confirmed (%s)", type(exc).__name__)
        return False
    return True
