"""The delivery reader: one consumer for the deliver topics of every HTTP subscription.

The way a Kafka Connect sink task reads: a delivery process has one consumer in the group
`<prefix>.delivery` (`Groups.delivery`), subscribed to the deliver topics of the active HTTP
subscriptions it knows. The group spreads their partitions over every delivery process
(round robin, so one-partition topics spread too); a process that stops or dies gives its
partitions to the others, one that joins takes its share, and none restarts. What a
subscription costs while idle is its partitions in one fetch request, not a consumer, a
group and a fetch loop of its own.

Each record goes to its subscription's `Courier` (`connectors.courier`), which holds it in
a lane and delivers; the reader does for all couriers what a courier's own consumer did:

- back-pressure: it pauses the partitions a courier cannot hold more of
  (`Holding.to_pause`) and seeks where a courier reads spilled records again
  (`Holding.to_seek`); the other subscriptions' partitions keep being read;
- commits: every `_COMMIT_EVERY_S`, per partition the courier's lowest unfinished offset,
  in one request for all couriers;
- a rebalance: before partitions go, each courier's lanes of them start nothing new and
  the attempts in flight get `_REVOKE_GRACE_S` to finish, then the finished offsets are
  committed and the lanes stop; the new owner reads on from the commit (at least once, never
  two processes delivering one partition at a time);
- a partition whose subscription has no courier here (stopping, stopped, or not started
  yet: the process's view of the subscription set is a moment behind the group's) is paused
  and its position set back to the first record not taken, or to the stopped courier's
  lowest unfinished offset, so a courier started for it later misses nothing.

Idle partitions cost next to nothing: a fetch carries every partition it reads, both ways,
in pure Python (aiokafka has no incremental fetch sessions, KIP-227), so with thousands of
idle subscriptions every record waited for a fetch of thousands of partitions. A partition
whose courier is idle and that brought nothing for `_COOL_S` *cools*: the consumer pauses
it, and a second, group-less consumer (the *watcher*) long-polls every cool partition from
the same position, `_WATCH_WAIT_MS` at a time. The moment the watcher sees a record of one,
it is paused there and resumed in the consumer, which reads it (the watcher's copy is
dropped): the consumer's fetches carry only the partitions that are busy, and the idle ones
are one fetch every few seconds (and aiokafka's fetchers, which walked every assigned
partition on each wake, are shown only those they may fetch: `streams.kafka.fetching`).
Back-pressure, commits and reports look only at the busy partitions' couriers (an idle
courier has nothing to pause, seek or commit).

A topic added to or removed from the subscription waits at most `_RESUBSCRIBE_S` (so many
subscriptions added at once are one rebalance, not one each). The first time the group
takes a partition it has no committed offset for, it starts where the subscription's own
courier group of earlier versions (`Groups.deliver`) committed, if it did, else at the
partition's start; that offset is committed in the group at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any, Final, Protocol

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from connectors.attempts import pause
from streams.config import Settings
from streams.health import Health, Progress
from streams.kafka import fetching
from streams.kafka.clients import make_admin, make_consumer
from streams.kafka.topics import Groups
from streams.retry import KAFKA_READ

__all__ = ["Reader", "Taker"]

log = logging.getLogger(__name__)

_POLL_MS: Final = 100  # how long one getmany waits for records at most
# how long the broker holds a fetch of the busy partitions with nothing new: a partition the
# watcher wakes joins the consumer's fetches when the one in flight is back
_FETCH_WAIT_MS: Final = 200
_FETCHER_WAKE_MS: Final = 1000  # how often aiokafka's fetcher wakes with nothing to do
_COOL_S: Final = 3.0  # a partition with nothing for this long (courier idle) is watched
_SWEEP_S: Final = 1.0  # how often partitions are checked for cooling
_WATCH_WAIT_MS: Final = 5_000  # how long the broker holds the watcher's fetch of cool ones
_REPORT_ALL_S: Final = 10.0  # idle couriers report this often (busy ones every second)
_MAX_POLL: Final = 500  # a courier holds at most its cap plus one fetch
_COMMIT_EVERY_S: Final = 0.5
_PROGRESS_EVERY_S: Final = 1.0
_RESUBSCRIBE_S: Final = 1.0  # topic changes within this are one rebalance
_REVOKE_GRACE_S: Final = 2.0  # how long a rebalance waits for attempts in flight


class Taker(Protocol):
    """What the reader asks of a subscription's courier (`connectors.courier.Courier`)."""

    topic: str

    @property
    def stopping(self) -> bool: ...

    @property
    def idle(self) -> bool: ...

    def take(self, partition: int, message: Any) -> None: ...

    def back_pressure(
        self, assigned: list[TopicPartition]
    ) -> tuple[dict[TopicPartition, int], set[TopicPartition]]: ...

    def to_commit(self) -> dict[TopicPartition, int]: ...

    def committed(self, offsets: dict[TopicPartition, int]) -> None: ...

    def restart_offset(self, partition: int) -> int | None: ...

    async def drain(self, partitions: set[int], grace_s: float) -> None: ...

    def revoked(self, partitions: set[int]) -> None: ...

    def report(self) -> None: ...


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, reader: Reader) -> None:
        self._reader = reader

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._reader._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._reader._assigned(set(assigned))


class Reader:
    """Reads the deliver topics of the couriers `attach`ed, in the delivery group."""

    def __init__(self, settings: Settings, *, health: Health | None = None) -> None:
        self.settings = settings
        self._groups = Groups(settings.kafka.topic_prefix)
        self._consumer = make_consumer(
            settings,
            "delivery",
            group=self._groups.delivery,
            fetch_max_wait_ms=_FETCH_WAIT_MS,
            consumer_timeout_ms=_FETCHER_WAKE_MS,
            max_poll_records=_MAX_POLL,
            metadata_max_age_ms=30_000,  # also notices partitions added later
        )
        # reads nothing to deliver: tells which cool partition has a record (`_watch`)
        self._watcher = make_consumer(
            settings,
            "delivery-watch",
            group=None,
            fetch_max_wait_ms=_WATCH_WAIT_MS,
            consumer_timeout_ms=_WATCH_WAIT_MS,
            request_timeout_ms=int(settings.kafka.request_timeout_s * 1000) + _WATCH_WAIT_MS,
        )
        self._hot: dict[TopicPartition, float] = {}  # read by the consumer -> last record at
        self._cool: dict[TopicPartition, int] = {}  # watched from this offset, paused here
        self._reading: set[TopicPartition] | None = None  # not paused here, as last set
        self._seen: set[TopicPartition] = set()  # the assignment `_reading` was set for
        self._by_topic: dict[str, list[TopicPartition]] = {}  # of the assignment `_seen`
        self._couriers: dict[str, Taker] = {}  # deliver topic -> its courier
        self._subscribed: frozenset[str] = frozenset()
        self._subscribed_at = 0.0
        self._changed = asyncio.Event()
        self._unheld: dict[TopicPartition, int] = {}  # no courier takes it: seek here, paused
        self._started_from: set[TopicPartition] = set()  # committed offsets known in the group
        self._starting: set[TopicPartition] = set()  # assigned, start not settled yet
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._health = health
        self._progress: Progress | None = (
            health.part("delivery", "reader") if health is not None else None
        )
        self._troubles: dict[str, str] = {}

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self._consumer.start()
        await self._watcher.start()
        for consumer in (self._consumer, self._watcher):  # each holds thousands paused
            fetching.install(consumer)
        self._task = asyncio.create_task(self._run(), name="delivery-reader")
        self._watch_task = asyncio.create_task(self._watch(), name="delivery-watcher")

    async def halt(self) -> None:
        """Stop fetching (couriers may still commit through `commit`)."""
        self._stopping.set()
        tasks = {t for t in (self._task, self._watch_task) if t is not None}
        for task in tasks:
            task.cancel()  # a fetch or a wait for metadata: nothing to finish
        if tasks:
            await asyncio.wait(tasks)

    async def close(self, deadline_s: float) -> None:
        """Leave the group and close (after `halt` and the couriers' stops)."""
        await self.halt()
        try:
            async with asyncio.timeout(max(0.05, deadline_s)):
                await asyncio.gather(self._consumer.stop(), self._watcher.stop())
        except TimeoutError:
            log.warning("the delivery reader's consumer did not close in time")
        if self._health is not None:
            self._health.drop("delivery", "reader")

    def attach(self, courier: Taker) -> None:
        """Deliver the records of `courier`'s topic to it, from the next fetch on."""
        topic = courier.topic
        self._couriers[topic] = courier
        assigned = self._consumer.assignment()
        for tp in [tp for tp in self._unheld if tp.topic == topic]:
            offset = self._unheld.pop(tp)
            if tp in assigned:  # (revoked meanwhile: its new owner starts from the commit)
                self._consumer.seek(tp, offset)  # paused until back-pressure says
        self._heat(self.assigned(topic))
        self._changed.set()

    def detach(self, courier: Taker) -> None:
        """`courier` has stopped: its topic is left to the others after the next
        resubscription; meanwhile its partitions wait, set back to its first unfinished
        record."""
        topic = courier.topic
        if self._couriers.get(topic) is courier:
            del self._couriers[topic]
        mine = self.assigned(topic)
        for tp in mine:
            offset = courier.restart_offset(tp.partition)
            if offset is not None:
                self._unheld[tp] = min(offset, self._unheld.get(tp, offset))
        self._heat(mine)  # no longer watched: paused here until a courier takes them
        self._changed.set()

    # -- what couriers ask --------------------------------------------------------------

    def assignment(self) -> frozenset[TopicPartition]:
        """Every deliver-topic partition the group gave this process now."""
        return frozenset(self._consumer.assignment())

    def assigned(self, topic: str) -> list[TopicPartition]:
        """The partitions of `topic` this process reads now."""
        return list(self._partitions().get(topic, ()))

    def highwater(self, tp: TopicPartition) -> int | None:
        value: int | None = self._consumer.highwater(tp)
        return value

    def paused(self, topic: str) -> frozenset[int]:
        """The partitions of `topic` not being read now (a cool one is: by the watcher)."""
        return frozenset(
            tp.partition
            for tp in self._consumer.paused()
            if tp.topic == topic and tp not in self._cool
        )

    async def commit(self, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Commit those of `offsets` whose partitions are still assigned here; those
        committed."""
        assigned = self._consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if mine:
            await self._consumer.commit(mine)
        return mine

    # -- reading ------------------------------------------------------------------------

    async def _run(self) -> None:
        last_commit = last_progress = last_sweep = last_report_all = time.monotonic()
        while not self._stopping.is_set():
            try:
                await self._follow_topics()
                if not self._subscribed:
                    await self._wait_for_topics()
                    continue
                if self._starting:
                    await self._settle_starts()
                self._back_pressure()
                batches = await self._consumer.getmany(timeout_ms=_POLL_MS)
                for tp, records in batches.items():
                    self._hand_out(tp, records)
                now = time.monotonic()
                if now - last_commit >= _COMMIT_EVERY_S:
                    await self._commit_all()
                    last_commit = now
                if now - last_progress >= _PROGRESS_EVERY_S:
                    everyone = now - last_report_all >= _REPORT_ALL_S
                    for courier in self._couriers.values() if everyone else self._busy():
                        courier.report()
                    last_progress = now
                    if everyone:
                        last_report_all = now
                if now - last_sweep >= _SWEEP_S:
                    await self._sweep(now)
                    last_sweep = now
            except KafkaError as exc:
                log.warning("delivery reader: Kafka error (%s); retrying", type(exc).__name__)
                if not KAFKA_READ.retriable(exc):  # e.g. not authorised: retried, and visible
                    self._trouble(f"Kafka refuses reading or committing ({type(exc).__name__})")
                await pause(self._stopping, KAFKA_READ.delay(1))
            except Exception:  # a bug here must not end delivery: visible, retried
                log.exception("delivery reader: reading failed; retrying")
                self._trouble("reading failed with an internal error (see the log)")
                await pause(self._stopping, KAFKA_READ.delay(1))
            else:
                self._trouble(None)

    async def _wait_for_topics(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_POLL_MS / 1000 * 5):
                await self._changed.wait()

    def _trouble(self, reason: str | None) -> None:
        if self._progress is None:
            return
        if reason is None:
            self._progress.mended()
        else:
            self._progress.broken(reason)

    async def _follow_topics(self) -> None:
        """Subscribe to the couriers' topics when they changed (at most every
        `_RESUBSCRIBE_S`), once the broker knows them."""
        if not self._changed.is_set():
            return
        wanted = frozenset(t for t, c in self._couriers.items() if not c.stopping)
        if wanted == self._subscribed:
            self._changed.clear()
            return
        if time.monotonic() - self._subscribed_at < _RESUBSCRIBE_S:
            return
        self._changed.clear()
        await self._known(wanted - self._subscribed)
        # A new subscription revokes every partition (eager rebalancing), and aiokafka has
        # no assignment left to commit against once it is made: the revocation's work
        # (attempts in flight finish, what is finished is committed) is done before.
        held = set(self._consumer.assignment())
        if held:
            await self._revoked(held)
        if wanted:
            self._consumer.subscribe(sorted(wanted), listener=_Rebalance(self))
        else:
            self._consumer.unsubscribe()
        log.info("delivery reader: reading %d deliver topics", len(wanted))
        self._subscribed, self._subscribed_at = wanted, time.monotonic()

    async def _known(self, topics: frozenset[str]) -> None:
        # A topic created a moment ago (a new subscription) may not be in the broker's
        # metadata yet; a group joined then gets no partitions of it until the next refresh.
        missing = set(topics)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.kafka.request_timeout_s):
                while missing:
                    missing -= await self._consumer.topics()
                    if missing:
                        await asyncio.sleep(0.1)
        if missing:
            log.warning("%d deliver topics are not known to the broker yet", len(missing))

    def _hand_out(self, tp: TopicPartition, records: list[Any]) -> None:
        if tp in self._starting:
            return  # fetched before its start was settled: `_settle_starts` seeks
        courier = self._couriers.get(tp.topic)
        if courier is None or courier.stopping or tp in self._unheld:
            if records and tp not in self._unheld:  # leave them in Kafka, for a courier
                self._unheld[tp] = records[0].offset
                self._consumer.seek(tp, records[0].offset)
            return
        if records:
            self._hot[tp] = time.monotonic()
        for message in records:
            courier.take(tp.partition, message)  # never raises

    def _partitions(self) -> dict[str, list[TopicPartition]]:
        """The assignment by topic (rebuilt when it changed)."""
        assigned = self._consumer.assignment()
        if assigned != self._seen:
            self._seen = set(assigned)
            self._by_topic = {}
            for tp in assigned:
                self._by_topic.setdefault(tp.topic, []).append(tp)
            self._reading = None  # what is paused is looked at again
        return self._by_topic

    def _heat(self, tps: Iterable[TopicPartition]) -> None:
        """Read `tps` here again (no longer watched), from now on."""
        now = time.monotonic()
        for tp in tps:
            self._hot[tp] = now
            self._cool.pop(tp, None)

    def _busy(self) -> list[Taker]:
        """The couriers of the partitions read here (a cool partition's courier is idle)."""
        return [c for t in {tp.topic for tp in self._hot} if (c := self._couriers.get(t))]

    def _back_pressure(self) -> None:
        """Seek and pause what the couriers of the partitions read here ask
        (`Holding.to_seek`, `Holding.to_pause`), pause the partitions no courier takes now
        and the cool ones (watched), resume the others."""
        by_topic = self._partitions()
        assigned = self._seen
        # a courier detached while a rebalance was revoking: what is no longer ours is not
        # to be paused, nor sought back (its new owner starts from the commit)
        for gone in [tp for tp in self._unheld if tp not in assigned]:
            del self._unheld[gone]
        for gone in [tp for tp in self._hot if tp not in assigned]:
            del self._hot[gone]
        self._starting &= assigned
        held_back: set[TopicPartition] = set(self._unheld) | self._starting
        reading: set[TopicPartition] = set()
        for topic in {tp.topic for tp in self._hot}:
            courier = self._couriers.get(topic)
            if courier is None or courier.stopping:
                continue
            tps = [tp for tp in by_topic.get(topic, ()) if tp in self._hot]
            if courier.idle:
                reading.update(tps)
                continue
            seeks, waiting = courier.back_pressure(tps)
            for tp, offset in seeks.items():
                self._consumer.seek(tp, offset)
            reading.update(tp for tp in tps if tp not in waiting)
        reading -= held_back
        if reading == self._reading:
            return  # nothing changed: the consumer is as it was set
        self._reading = reading
        paused = self._consumer.paused()
        wanted = assigned - reading
        if wanted - paused:
            self._consumer.pause(*(wanted - paused))
        if paused - wanted:
            self._consumer.resume(*(paused - wanted))  # (wakes its fetcher: `fetching`)

    async def _sweep(self, now: float) -> None:
        """Hand the partitions that brought nothing for `_COOL_S`, of idle couriers, to the
        watcher, from where the consumer stands."""
        idle: dict[str, bool] = {}
        cooling = []
        for tp, last in self._hot.items():
            if now - last < _COOL_S or tp in self._unheld or tp in self._starting:
                continue
            if tp.topic not in idle:
                courier = self._couriers.get(tp.topic)
                idle[tp.topic] = courier is not None and not courier.stopping and courier.idle
            if idle[tp.topic]:
                cooling.append(tp)
        if not cooling:
            return
        for tp in cooling:
            del self._hot[tp]
        self._back_pressure()  # paused here: records fetched and not taken are dropped
        offsets = {tp: await self._consumer.position(tp) for tp in cooling if tp in self._seen}
        self._partitions()  # (a rebalance while waiting: only what is still ours is watched)
        self._cool.update(
            (tp, o) for tp, o in offsets.items() if tp in self._seen and tp not in self._hot
        )
        self._rewatch()

    def _rewatch(self) -> None:
        """Let the watcher long-poll the cool partitions (and only those) from their
        offsets."""
        assigned = sorted(self._consumer.assignment())
        self._cool = {tp: o for tp, o in self._cool.items() if tp in self._seen}
        # every assigned partition, so that a change of the cool ones asks no new metadata;
        # a new assignment also ends the fetch in flight, which misses a partition just cool
        self._watcher.assign(assigned)
        for tp in assigned:
            self._watcher.seek(tp, self._cool.get(tp, 0))
        others = [tp for tp in assigned if tp not in self._cool]
        if others:
            self._watcher.pause(*others)
        log.debug("delivery reader: %d partitions watched", len(self._cool))

    async def _watch(self) -> None:
        """Wake the cool partitions the watcher saw a record of: read here again."""
        while not self._stopping.is_set():
            try:
                batches = await self._watcher.getmany(timeout_ms=_WATCH_WAIT_MS)
                woken = [tp for tp, records in batches.items() if records and tp in self._cool]
                if woken:
                    self._watcher.pause(*woken)  # before its next fetch is sent
                    self._heat(woken)
                    self._back_pressure()  # resumed here now: the next fetch reads them
            except KafkaError as exc:
                log.warning("delivery watcher: Kafka error (%s); retrying", type(exc).__name__)
                await pause(self._stopping, KAFKA_READ.delay(1))
            except Exception:  # a bug here would leave idle partitions unread: visible, retried
                log.exception("delivery watcher: watching failed; retrying")
                self._trouble("watching idle partitions failed (see the log)")
                await pause(self._stopping, KAFKA_READ.delay(1))

    async def _commit_all(self) -> None:
        offsets: dict[TopicPartition, int] = {}
        couriers = [c for c in self._busy() if not c.idle]
        for courier in couriers:
            offsets.update(courier.to_commit())
        if offsets:
            done = await self.commit(offsets)
            for courier in couriers:
                courier.committed(done)

    # -- rebalancing --------------------------------------------------------------------

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        # another member may take these over: commit what is finished, drop the rest
        # (lanes of those partitions stop; the new owner delivers them again)
        by_courier = {
            courier: {tp.partition for tp in revoked if tp.topic == topic}
            for topic in {tp.topic for tp in revoked}
            if (courier := self._couriers.get(topic)) is not None
        }
        # attempts in flight finish first (bounded): what reached a subscriber is committed
        await asyncio.gather(*(c.drain(p, _REVOKE_GRACE_S) for c, p in by_courier.items()))
        with contextlib.suppress(KafkaError):
            await self._commit_all()
        for courier, partitions in by_courier.items():
            courier.revoked(partitions)
        for tp in revoked:
            self._unheld.pop(tp, None)
            self._started_from.discard(tp)
            self._starting.discard(tp)
            self._hot.pop(tp, None)
            self._cool.pop(tp, None)

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        # fetching may begin before this runs: records of a partition whose start is not
        # settled yet are handed to no courier (`_hand_out`) until `_settle_starts`
        self._starting |= assigned - self._started_from
        self._heat(assigned)  # read here until they bring nothing for a while
        self._reading = None  # a new assignment is unpaused: set again
        self._rewatch()

    async def _settle_starts(self) -> None:
        """Start the partitions the group has no committed offset for where the
        subscription's earlier own group left them, else at their start; commit that."""
        assigned = self._consumer.assignment()
        new = {tp for tp in self._starting if tp in assigned}
        self._starting.clear()
        if not new:
            return
        try:
            committed, starts = await self._starts(new)
            assigned = self._consumer.assignment()
            starts = {tp: o for tp, o in starts.items() if tp in assigned}
            if starts:
                await self._consumer.commit(starts)
            # every one, also where the group had committed: records fetched before the start
            # was settled were handed to no courier, and the position moved past them
            for tp, offset in {**committed, **starts}.items():
                if tp in assigned:
                    self._consumer.seek(tp, offset)
            self._started_from |= new
        except KafkaError:
            self._starting |= new  # tried again on the next round
            raise

    async def _starts(
        self, tps: set[TopicPartition]
    ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """Of `tps`: the offsets the group committed, and where the others start."""
        admin = make_admin(self.settings, "delivery-starts")
        await admin.start()
        try:
            have = await admin.list_consumer_group_offsets(
                self._groups.delivery, partitions=sorted(tps)
            )
            committed = {tp: o.offset for tp, o in have.items() if tp in tps and o.offset >= 0}
            fresh = tps - set(committed)
            starts: dict[TopicPartition, int] = {}
            for topic in {tp.topic for tp in fresh}:
                legacy = self._groups.deliver(topic.removeprefix(f"{self._groups.prefix}.deliver."))
                old = await admin.list_consumer_group_offsets(
                    legacy, partitions=sorted(tp for tp in fresh if tp.topic == topic)
                )
                starts.update({tp: o.offset for tp, o in old.items() if o.offset >= 0})
        finally:
            await admin.close()
        rest = fresh - set(starts)
        if rest:
            starts.update(await self._consumer.beginning_offsets(sorted(rest)))
        return committed, starts
