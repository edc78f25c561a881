"""The durable subscription set: the compacted topic `gemeentebus.subscriptions`, read by all.

One record per subscription (key = id, value = JSON of `Subscription.record_dict()`, its
secrets sealed), a tombstone deletes; each volgindicatie is a record of its own
(`streams.routing.records`), so concurrent changes to one subscription's volgindicaties
lose none.
`put`, `put_many`, `delete`, `follow` and `unfollow` write with the idempotent producer and
wait for the broker (`put_many` sends all its records, then waits for them together); a new
subscription's topics exist before its record is written. Every process runs a reader (a
plain consumer without a group, from the beginning, then following) that keeps its
`SubscriptionIndex` up to date.

The reader follows the compacted `gemeentebus.retirements` too: `retire` (the delivery
role's one write, after a `410 Gone`) records there that the current version of a
subscription is retired, and the store then hands that subscription out as `retired` until
its record changes (`streams.routing.retirements`). A retirement record that is not one is
logged with the reason and ignored; it can change nothing but the status.

Consistency, in offsets of those topics:
- `ready()`: the reader has applied everything that existed when the store started;
- `sync()`: the reader has applied everything written before the call (the router calls it
  per batch, so an event published after `put` returned is matched against that `put`);
- `put`/`delete` return only once their own write is applied here (read-your-writes).

What the store hands out is bound to each owner's current grant (`streams.routing.grants`,
from `settings.clients`; `regrant` for a changed configuration): a subscription the grant
no longer covers is suspended, out of the index, until it is covered again.

Webhook secrets are sealed (`streams.routing.sealing`, key `security.secrets_key`): a
record whose secret does not open is refused and not applied. The store keeps what it had
for that id, logs the id and the reason code (never the value), counts it in
`gemeentebus_subscription_records_refused{reason}` and lists it in `refused`.

The reader never dies silently. A temporary Kafka error is retried for as long as it lasts
(the `subscriptions` part of `Health` says why the process is not ready). Anything else
that stops it, the topic vanishing from the cluster included, stops reading (no spinning
on a topic that is gone), is retried with a backoff, and once it lasted
`health.give_up_after_s` the store gives up: every waiter raises `KafkaUnavailable` and
`Health.fail` tells the process to exit non-zero, for a supervisor to restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from streams.config import Settings
from streams.exceptions import KafkaUnavailable, TopicsRefused
from streams.health import Health, Progress
from streams.ingress.metrics import metrics
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.topics import (
    Creation,
    Topics,
    bus_topics,
    create_topics,
    ensure_topics,
    subscription_topics,
)
from streams.retry import RetryPolicy
from streams.routing import retirements
from streams.routing.grants import Grants
from streams.routing.matching import SubscriptionIndex
from streams.routing.records import Applied, Records
from streams.routing.sealing import Keyring, SealRefused
from streams.routing.subscriptions import Subscription

__all__ = ["Change", "SubscriptionStore"]

log = logging.getLogger(__name__)

# A change as the reader applied it: the id, and the new value (None: deleted).
Change = Callable[[str, Subscription | None], None]

_POLL_MS = 200
_TOPICS_TIMEOUT_S = 5.0


class _TopicGone(Exception):
    """The subscription (or retirements) topic is no longer in the cluster's metadata."""


class SubscriptionStore:
    """The subscription set of one process, kept in step with the compacted topic.

    `start()` before use, `stop()` after. `index` is what matching reads; `changes` holds
    callbacks run (in the reader task) after each applied record. The reader reports into
    `health` (a shared part `subscriptions`) when given one. `refused` maps the id of each
    subscription whose latest record was refused to the reason code. Without the secrets key
    in production the constructor raises `ConfigurationError`; `accept_clear` lets clear-text
    secrets through (for `gemeentebus secrets rotate`, which seals them).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        name: str = "store",
        health: Health | None = None,
        accept_clear: bool = False,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.kafka.topic_prefix)
        self.index = SubscriptionIndex()
        self.changes: list[Change] = []
        self._name = name
        self.grants = Grants.from_settings(settings)
        self._records = Records(
            Keyring.from_settings(settings), accept_clear=accept_clear, grants=self.grants
        )
        self.refused: dict[str, str] = {}
        # When each volgindicatie was set (ms, its record's time): replays start no earlier.
        self._since: dict[str, dict[str, int]] = {}
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
        self._health = health
        self.progress = health.shared("subscriptions") if health else Progress("subscriptions")
        self._policy = RetryPolicy(
            initial_s=0.5, max_s=5.0, give_up_after_s=settings.health.give_up_after_s
        )

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def _read_topics(self) -> tuple[str, str]:
        return self.topics.subscriptions, self.topics.retirements

    async def start(self) -> None:
        """Create the topics if missing, connect, and start following them from the beginning."""
        names = self._read_topics
        specs = [s for s in bus_topics(self.settings.kafka, ()) if s.name in names]
        await create_topics(self.settings.kafka, specs)
        await self._producer.start()
        await self._consumer.start()
        await self._offsets.start()
        try:
            self._partitions = [
                TopicPartition(topic, p)
                for topic in names
                for p in sorted(await self._partitions_of(topic))
            ]
        except BaseException:
            await self.stop()
            raise
        self._consumer.assign(self._partitions)
        # The end-offsets client learns their leaders now, not after two retry backoffs on
        # the first `_end_offsets`; paused, it fetches nothing (so no long-poll delays it).
        self._offsets.assign(self._partitions)
        self._offsets.pause(*self._partitions)
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
        if self._failure is not None:
            raise KafkaUnavailable("the subscription reader stopped") from self._failure
        await self._wait_applied(await self._end_offsets())

    # -- reading ------------------------------------------------------------------------

    def get(self, subscription_id: str) -> Subscription | None:
        """The subscription with this id as this process knows it (retired ones included)."""
        return self._all.get(subscription_id)

    def followed_since(self, subscription_id: str) -> Mapping[str, int]:
        """Per followed pseudonym, when this subscription began to follow that person
        (epoch ms: the time of the record that set the volgindicatie, the earliest still in
        the topic; an einddatum changed later, once compacted, moves it later, never earlier)."""
        return self._since.get(subscription_id, {})

    def __iter__(self) -> Iterator[Subscription]:
        return iter(list(self._all.values()))

    def __len__(self) -> int:
        return len(self._all)

    @property
    def keyring(self) -> Keyring:
        """The keys this store seals and opens webhook secrets with."""
        return self._records.keyring

    def version(self, subscription_id: str) -> str | None:
        """The version of this subscription's record as last read (None: no such one)."""
        return self._records.versions.get(subscription_id)

    def sealed_with(self, subscription_id: str) -> frozenset[str]:
        """The ids of the keys that sealed this subscription's secrets as last read (`CLEAR`
        for a clear-text one; empty: none, or no such subscription)."""
        return self._records.sealed_with.get(subscription_id, frozenset())

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

    def regrant(self, settings: Settings) -> None:
        """Bind every subscription to the grants of `settings.clients` from now on (a changed
        configuration): a subscription its owner's grant no longer covers is suspended at
        once, one covered again resumes; the change listeners hear of each."""
        self.grants = Grants.from_settings(settings)
        for subscription in self._records.regrant(self.grants):
            self.index.upsert(subscription)
            self._announce(subscription.id, subscription)

    # -- writing ------------------------------------------------------------------------

    async def put(self, subscription: Subscription) -> Subscription:
        """Store a subscription (new or changed); returns once it is visible here.

        A new subscription gets its `deliver.<id>` and `.dlq` topics first, and its record is
        written once the cluster's metadata has them, so nothing is ever routed to a topic
        that does not exist (`TopicsRefused` or `ConfigurationError` when the cluster would
        not create them).
        """
        if subscription.id not in self._all:
            kafka = self.settings.kafka
            specs = subscription_topics(kafka, subscription.id)
            creation = await ensure_topics(kafka, specs, new=True)
            for error in creation.refused.values():
                raise error
        await self._write(self._records.put(subscription))
        return subscription

    async def put_many(self, subscriptions: Sequence[Subscription]) -> None:
        """Store many subscriptions at once (`gemeentebus subscriptions apply`); returns once
        all are visible here.

        The topics of every new one are created first, in a few CreateTopics requests; then
        the records of those whose topics exist are sent together and confirmed together.
        A subscription whose topic the cluster refused is not written, and `TopicsRefused`
        names each refused topic and each such subscription (after the others were written).
        """
        kafka = self.settings.kafka
        new = [s.id for s in subscriptions if s.id not in self._all]
        specs = {s.id: subscription_topics(kafka, s.id) for s in subscriptions if s.id in new}
        wanted = [spec for group in specs.values() for spec in group]
        creation = await ensure_topics(kafka, wanted, new=True) if wanted else Creation()
        refused = {topic: _why(exc, topic) for topic, exc in creation.refused.items()}
        failed = {i for i, group in specs.items() if any(s.name in refused for s in group)}
        written = [s for s in subscriptions if s.id not in failed]
        await self._write([record for s in written for record in self._records.put(s)])
        if refused:
            raise TopicsRefused(refused, not_written=sorted(failed))

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

    async def retire(self, subscription_id: str, version: str) -> None:
        """Record that this version of the subscription answered `410 Gone` (in the
        retirements topic); returns once it is applied here. A later change of the
        subscription makes it active again: then this retirement no longer applies."""
        retirement = retirements.Retirement(subscription_id, version, datetime.now(UTC))
        await self._write([retirements.record(retirement)], self.topics.retirements)

    async def _write(self, records: list[tuple[bytes, bytes | None]], topic: str = "") -> None:
        futures = [
            await self._producer.send(topic or self.topics.subscriptions, value, key=key)
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
        failing_since: float | None = None
        attempt = 0
        while True:
            try:
                if failing_since is not None:
                    await self._resume()
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is retried with a bound
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                attempt += 1
                reason = _reason(exc, self.topics.subscriptions)
                self.progress.broken(reason)
                # temporary (the broker away): retried as long as it lasts, never given up on
                temporary = self._policy.retriable(exc)
                bound = self._policy.give_up_after_s
                gives_up = not temporary and bound is not None and now - failing_since >= bound
                if gives_up:
                    await self._give_up(exc, reason)
                    return
                log.warning("%s; trying again (attempt %d)", reason, attempt)
                if isinstance(exc, _TopicGone):  # let go: aiokafka spins on a missing topic
                    self._consumer.unsubscribe()
                await asyncio.sleep(self._policy.delay(attempt))
                continue
            if failing_since is not None:
                log.warning("reading subscriptions again after %d attempts", attempt)
                self.progress.mended()
                failing_since, attempt = None, 0

    async def _read(self) -> None:
        """One poll: apply what arrived, move the applied offsets, wake the waiters."""
        batches = await self._consumer.getmany(timeout_ms=_POLL_MS)
        applied = 0
        for records in batches.values():
            for record in records:
                self._apply(record)
                applied += 1
        if not batches and any(
            self._consumer.partitions_for_topic(t) is None for t in self._read_topics
        ):
            await self._check_topic()
        async with self._moved:
            for tp in self._partitions:
                self._applied[tp] = await self._consumer.position(tp)
            self._moved.notify_all()
        if applied:
            self.progress.advanced()
        highwater = (self._consumer.highwater(tp) for tp in self._partitions)
        lag = sum(
            max(0, (end or 0) - self._applied[tp])
            for tp, end in zip(self._partitions, highwater, strict=True)
        )
        self.progress.waiting(lag)

    async def _check_topic(self) -> None:
        """Raise `_TopicGone` when a fresh metadata request lacks a topic the reader reads."""
        async with asyncio.timeout(_TOPICS_TIMEOUT_S):
            present = await self._offsets.topics()
        for topic in self._read_topics:
            if topic not in present:
                raise _TopicGone(topic)

    async def _resume(self) -> None:
        """Start reading again where the reader was, once its topic is there."""
        await self._check_topic()
        if not self._consumer.assignment():
            self._consumer.assign(self._partitions)
        for tp in self._partitions:
            self._consumer.seek(tp, self._applied[tp])

    async def _give_up(self, exc: BaseException, reason: str) -> None:
        self._failure = exc
        log.error("the subscription reader gave up: %s", reason)
        async with self._moved:
            self._moved.notify_all()
        if self._health is not None:
            self._health.fail(f"subscriptions: {reason}")

    def _apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        where = f"partition {record.partition} offset {record.offset}"
        if record.topic == self.topics.retirements:
            self._apply_retirement(record, where)
            return
        try:
            place = (record.partition, record.offset)
            applied = self._records.apply(record.key, record.value, place=place)
        except SealRefused as exc:
            # the record is not applied: this id keeps what it had (visible, never silent)
            self.refused[exc.subscription_id] = exc.code
            metrics().subscription_records_refused.labels(exc.code).inc()
            log.error(
                "refused the record of subscription %s at %s: %s %s; keeping its previous state",
                exc.subscription_id,
                where,
                exc.field,
                exc.code,
            )
            return
        except (UnicodeDecodeError, ValueError, ValidationError) as exc:
            # no content in the log: a record may hold a token or a pseudonym
            log.error(
                "skipped an undecodable subscription record at %s (%s)", where, type(exc).__name__
            )
            return
        subscription_id, subscription = applied.subscription_id, applied.subscription
        self._note_since(applied, record)
        if applied.pseudonym is None:
            self.refused.pop(subscription_id, None)
        if applied.pseudonym is not None:
            if subscription is None:
                return  # a volgindicatie of a subscription not (yet) read
            self.index.follow(subscription_id, applied.pseudonym, following=applied.following)
        elif subscription is None:
            self.index.remove(subscription_id)
        else:
            self.index.upsert(subscription)
        self._announce(subscription_id, subscription)

    def _note_since(self, applied: Applied, record: ConsumerRecord[bytes, bytes]) -> None:
        since = self._since.setdefault(applied.subscription_id, {})
        if applied.pseudonym is not None:
            if record.value is None:
                since.pop(applied.pseudonym, None)
            else:
                since.setdefault(applied.pseudonym, record.timestamp)
        elif applied.subscription is None:
            since.clear()
        else:  # volgindicaties in the subscription's own record (written before the split)
            for pseudonym in applied.subscription.volgindicaties:
                since.setdefault(pseudonym, record.timestamp)
        if not since:
            del self._since[applied.subscription_id]

    def _apply_retirement(self, record: ConsumerRecord[bytes, bytes], where: str) -> None:
        try:
            retirement = retirements.parse(record.key, record.value)
        except ValueError as exc:
            # the reason is ours, never the record's content
            log.error("ignored a malformed retirement record at %s: %s", where, exc)
            return
        subscription = self._records.retire(retirement)
        if subscription is not None:
            self.index.upsert(subscription)
            self._announce(subscription.id, subscription)

    def _announce(self, subscription_id: str, subscription: Subscription | None) -> None:
        for callback in self.changes:
            try:
                callback(subscription_id, subscription)
            except Exception:  # a listener's bug must not stop the reader
                log.exception("a subscription change listener failed")


def _why(exc: Exception, topic: str) -> str:
    """Why the cluster refused `topic`, in one line."""
    return exc.refused.get(topic, str(exc)) if isinstance(exc, TopicsRefused) else str(exc)


def _reason(exc: BaseException, topic: str) -> str:
    """Why the reader stopped, without any record content."""
    if isinstance(exc, _TopicGone):
        return f"topic {exc.args[0]} is gone from the cluster"
    if isinstance(exc, TimeoutError):
        return "the cluster did not answer a metadata request"
    return f"reading {topic} failed ({type(exc).__name__})"
