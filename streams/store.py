"""The durable subscription set: the compacted topic `gemeentebus.subscriptions`, read by all.

One record per subscription (key = id, value = JSON of `Subscription.record_dict()`), a
tombstone deletes; each volgindicatie is a record of its own (`streams.subscription_records`),
so concurrent changes to one subscription's volgindicaties lose none.
`put`, `delete`, `follow` and `unfollow` write with the idempotent producer and wait for the
broker; every process runs a reader (a plain consumer without a group, from the beginning,
then following) that keeps its `SubscriptionIndex` up to date.

Consistency, in offsets of that topic:
- `ready()`: the reader has applied everything that existed when the store started;
- `sync()`: the reader has applied everything written before the call (the router calls it
  per batch, so an event published after `put` returned is matched against that `put`);
- `put`/`delete` return only once their own write is applied here (read-your-writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import date

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from streams.app import make_consumer, make_producer
from streams.config import Settings
from streams.exceptions import KafkaUnavailable
from streams.matching import SubscriptionIndex
from streams.subscription_records import Records
from streams.subscriptions import Subscription
from streams.topics import Topics, bus_topics, create_topics, subscription_topics

__all__ = ["Change", "SubscriptionStore"]

log = logging.getLogger(__name__)

# A change as the reader applied it: the id, and the new value (None: deleted).
Change = Callable[[str, Subscription | None], None]

_POLL_MS = 200
_RETRY_S = 1.0


class SubscriptionStore:
    """The subscription set of one process, kept in step with the compacted topic.

    `start()` before use, `stop()` after. `index` is what matching reads; `changes` holds
    callbacks run (in the reader task) after each applied record.
    """

    def __init__(self, settings: Settings, *, name: str = "store") -> None:
        self.settings = settings
        self.topics = Topics(settings.kafka.topic_prefix)
        self.index = SubscriptionIndex()
        self.changes: list[Change] = []
        self._name = name
        self._records = Records()
        self._all = self._records.subscriptions  # retired ones too (the index has active only)
        self._producer: AIOKafkaProducer = make_producer(settings, f"{name}-writer", linger_ms=0)
        self._consumer = make_consumer(settings, f"{name}-reader")
        # End offsets are asked on a connection of their own: on the reader's, Kafka would
        # answer them only after its pending long-poll fetch (up to fetch_max_wait_ms).
        self._offsets = make_consumer(settings, f"{name}-offsets")
        self._partitions: list[TopicPartition] = []
        self._applied: dict[TopicPartition, int] = {}  # next offset to apply, per partition
        self._moved = asyncio.Condition()
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._readying: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Create the topic if missing, connect, and start following it from the beginning."""
        specs = [
            s for s in bus_topics(self.settings.kafka, ()) if s.name == self.topics.subscriptions
        ]
        await create_topics(self.settings.kafka, specs)
        await self._producer.start()
        await self._consumer.start()
        await self._offsets.start()
        try:
            parts = await self._partitions_of(self.topics.subscriptions)
        except BaseException:
            await self.stop()
            raise
        self._partitions = [TopicPartition(self.topics.subscriptions, p) for p in sorted(parts)]
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_beginning(*self._partitions)
        for tp in self._partitions:
            self._applied[tp] = await self._consumer.position(tp)
        ends = await self._end_offsets()
        self._reader = asyncio.create_task(self._follow(), name=f"{self._name}-reader")
        self._readying = asyncio.create_task(self._become_ready(ends), name=f"{self._name}-ready")

    async def stop(self) -> None:
        """Stop following and close the Kafka clients."""
        for task in (self._readying, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, KafkaUnavailable):
                    await task
        self._reader = self._readying = None
        await self._consumer.stop()
        await self._offsets.stop()
        await self._producer.stop()

    async def ready(self) -> None:
        """Return once every record that existed when the store started is applied."""
        await self._ready.wait()

    async def sync(self) -> None:
        """Return once every record written before this call is applied here."""
        await self._wait_applied(await self._end_offsets())

    # -- reading ------------------------------------------------------------------------

    def get(self, subscription_id: str) -> Subscription | None:
        """The subscription with this id as this process knows it (retired ones included)."""
        return self._all.get(subscription_id)

    def __iter__(self) -> Iterator[Subscription]:
        return iter(list(self._all.values()))

    def __len__(self) -> int:
        return len(self._all)

    async def wait_for(
        self,
        subscription_id: str,
        predicate: Callable[[Subscription | None], bool] | None = None,
    ) -> Subscription | None:
        """Wait until this id's local value satisfies `predicate` (default: it exists).

        Bound the wait with `asyncio.timeout` around the call.
        """
        check = predicate or (lambda sub: sub is not None)
        async with self._moved:
            await self._moved.wait_for(lambda: check(self._all.get(subscription_id)))
        return self._all.get(subscription_id)

    # -- writing ------------------------------------------------------------------------

    async def put(self, subscription: Subscription) -> Subscription:
        """Store a subscription (new or changed); returns once it is visible here.

        A new subscription gets its `deliver.<id>` and `.dlq` topics first, so nothing is
        ever routed to a topic that does not exist.
        """
        if subscription.id not in self._all:
            await create_topics(
                self.settings.kafka, subscription_topics(self.settings.kafka, subscription.id)
            )
        await self._write(self._records.put(subscription))
        return subscription

    async def delete(self, subscription_id: str) -> None:
        """Delete a subscription (a tombstone); returns once the delete is visible here.

        Its topics stay: a Kafka subscriber may still be reading what was delivered.
        """
        await self._write(self._records.delete(subscription_id))

    async def follow(self, subscription_id: str, pseudonym: str, einddatum: date | None) -> None:
        """Follow one person (one record of its own); returns once it is visible here."""
        await self._write([self._records.follow(subscription_id, pseudonym, einddatum)])

    async def unfollow(self, subscription_id: str, pseudonym: str) -> None:
        """Stop following one person; returns once it is visible here."""
        await self._write(self._records.unfollow(subscription_id, pseudonym))

    async def _write(self, records: list[tuple[bytes, bytes | None]]) -> None:
        futures = [
            await self._producer.send(self.topics.subscriptions, value, key=key)
            for key, value in records
        ]
        targets: dict[TopicPartition, int] = {}
        for meta in await asyncio.gather(*futures):
            tp = TopicPartition(meta.topic, meta.partition)
            targets[tp] = max(targets.get(tp, 0), meta.offset + 1)
        await self._wait_applied(targets)

    # -- the reader ---------------------------------------------------------------------

    async def _partitions_of(self, topic: str) -> set[int]:
        try:
            # the producer waits for a topic just created to show up in the metadata
            parts: set[int] = set(await self._producer.partitions_for(topic))
        except KafkaError as exc:
            raise KafkaUnavailable(f"topic {topic} has no partitions: {exc}") from exc
        return parts

    async def _end_offsets(self) -> dict[TopicPartition, int]:
        ends = await self._offsets.end_offsets(self._partitions)
        return {tp: int(offset) for tp, offset in ends.items()}

    async def _wait_applied(self, targets: Mapping[TopicPartition, int]) -> None:
        def reached() -> bool:
            if self._failure is not None:
                raise KafkaUnavailable("the subscription reader stopped") from self._failure
            return all(self._applied.get(tp, 0) >= offset for tp, offset in targets.items())

        async with self._moved:
            await self._moved.wait_for(reached)

    async def _become_ready(self, ends: Mapping[TopicPartition, int]) -> None:
        await self._wait_applied(ends)
        self._ready.set()

    async def _follow(self) -> None:
        try:
            while True:
                try:
                    batches = await self._consumer.getmany(timeout_ms=_POLL_MS)
                except KafkaError as exc:  # the reader must outlive a broker hiccup
                    log.warning("reading subscriptions failed (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(_RETRY_S)
                    continue
                for records in batches.values():
                    for record in records:
                        self._apply(record)
                async with self._moved:
                    for tp in self._partitions:
                        self._applied[tp] = await self._consumer.position(tp)
                    self._moved.notify_all()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failure = exc
            log.exception("the subscription reader stopped")
            async with self._moved:
                self._moved.notify_all()
            raise

    def _apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        where = f"partition {record.partition} offset {record.offset}"
        try:
            applied = self._records.apply(record.key, record.value)
        except (UnicodeDecodeError, ValueError, ValidationError) as exc:
            # no content in the log: a record may hold a token or a pseudonym
            log.error(
                "skipped an undecodable subscription record at %s (%s)", where, type(exc).__name__
            )
            return
        subscription_id, subscription = applied.subscription_id, applied.subscription
        if applied.pseudonym is not None:
            if subscription is None:
                return  # a volgindicatie of a subscription not (yet) read
            self.index.follow(subscription_id, applied.pseudonym, following=applied.following)
        elif subscription is None:
            self.index.remove(subscription_id)
        else:
            self.index.upsert(subscription)
        for callback in self.changes:
            try:
                callback(subscription_id, subscription)
            except Exception:  # a listener's bug must not stop the reader
                log.exception("a subscription change listener failed")
