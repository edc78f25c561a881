"""The dispatcher: every HTTP subscription's deliver topic, pushed to its webhook.

One `Courier` per active HTTP subscription, each with its own lanes, attempts and HTTP
session, all fed by the process's one `Reader` (`connectors.reader`: one consumer in the
group `<prefix>.delivery`, whose partitions the group spreads over every delivery process):
a slow or dead subscriber holds up only its own courier, and an idle one costs its
partitions in a fetch request. KAFKA subscriptions read their deliver topic themselves.

How a courier orders, commits, retries and dead-letters: see `connectors.courier`.

A `410 Gone` stops the subscription's courier at once; the dispatcher then retires the
subscription: a record in the retirements topic naming the version of the subscription that
answered (`SubscriptionStore.retire`, `streams.routing.retirements`; the delivery role may
not write the subscription set itself), retrying the write (`streams.retry.RETIRE` backoff,
logged, the courier's health part broken meanwhile) until it lands. Until the store shows the
retirement the dispatcher starts no courier for that subscription again, unless the
subscription is changed meanwhile (an operator's edit wins: then it is neither retired nor
skipped, and a retirement of the version before it no longer applies). A retirement refused
permanently (an ACL) is given up on, loudly: the subscription stays active in the store and
undelivered here until the process restarts (which tries again on the next 410) or the
operator retires or changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from connectors.courier import STOP_DEADLINE_S, Courier
from connectors.endpoints import Endpoints
from connectors.reader import Reader
from connectors.writes import WRITE_LINGER_MS
from streams.config import Settings
from streams.exceptions import KafkaUnavailable
from streams.health import Health
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics, bus_topics, create_topics
from streams.retry import KAFKA_READ, RETIRE
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)


class Dispatcher:
    """Runs a `Courier` for every active HTTP subscription of `store`, following its changes.

    The store is the caller's: started before `start()`, stopped after `stop()`.
    `counts[subscription id][outcome]` counts what happened (for tests and metrics).
    """

    def __init__(
        self, settings: Settings, store: SubscriptionStore, *, health: Health | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.health = health
        self.counts: dict[str, Counter[str]] = {}
        # the couriers' delivery-log and DLQ writes: a few ms of linger makes one produce
        # request of many attempts' records (nothing waits on a log write but the commit)
        self._producer = make_producer(settings, "dispatcher", linger_ms=WRITE_LINGER_MS)
        self._reader = Reader(settings, health=health)
        self.endpoints = Endpoints(settings.delivery)  # shared by every courier's attempts
        self._couriers: dict[str, Courier] = {}
        self._leaving: set[Courier] = set()  # stopping, not yet stopped
        self._gone: dict[str, Subscription] = {}  # answered 410, as it was then; not restarted
        self._changed = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._kafka_noted: set[str] = set()

    @property
    def running(self) -> frozenset[str]:
        """The ids of the subscriptions being delivered now."""
        return frozenset(self._couriers)

    @property
    def partitions(self) -> frozenset[TopicPartition]:
        """The deliver-topic partitions the delivery group gave this process now."""
        return self._reader.assignment()

    @property
    def pending(self) -> int:
        """Records read from delivery topics and not finished yet (retries included)."""
        return sum(courier.pending for courier in self._couriers.values())

    def totals(self) -> Counter[str]:
        """Outcomes over every subscription."""
        total: Counter[str] = Counter()
        for counts in self.counts.values():
            total.update(counts)
        return total

    async def start(self) -> None:
        """Wait for the subscription set, then start a courier per active HTTP subscription."""
        topics = Topics(self.settings.kafka.topic_prefix)
        specs = [s for s in bus_topics(self.settings.kafka, ()) if s.name == topics.deliveries]
        await create_topics(self.settings.kafka, specs)
        await self._producer.start()
        await self._reader.start()
        await self.store.ready()
        self.store.changes.append(self._on_change)
        await self._reconcile()
        self._follower = asyncio.create_task(self._follow(), name="dispatcher-follow")

    async def stop(self, deadline_s: float = STOP_DEADLINE_S) -> None:
        """Stop every courier (those already stopping too) within `deadline_s`: in-flight
        attempts and writes get what the deadline leaves, finished work is committed,
        retirements still being written are left to the next 410."""
        end = time.monotonic() + deadline_s
        with contextlib.suppress(ValueError):
            self.store.changes.remove(self._on_change)
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        retiring = list(self._retiring)
        for task in retiring:  # left to the next 410 (the subscription is still active)
            task.cancel()
        if retiring:
            await asyncio.wait(retiring)
        couriers = [*self._couriers.values(), *self._leaving]
        self._couriers = {}
        await self._reader.halt()  # no more records: the couriers finish what they hold
        closing = max(0.0, end - time.monotonic()) * 0.7  # the rest: reader and producer
        await asyncio.gather(*(c.stop(closing) for c in couriers))
        await self._reader.close(max(0.05, end - time.monotonic()) / 2)
        try:
            async with asyncio.timeout(max(0.05, end - time.monotonic())):
                await self._producer.stop()
        except TimeoutError:
            log.warning("the dispatcher's producer did not close within the deadline")

    def _on_change(self, subscription_id: str, subscription: Subscription | None) -> None:
        self._changed.set()  # runs in the store's reader task: only wake the follower

    async def _follow(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self._reconcile()
            except KafkaError:
                log.exception("starting a courier failed; trying again")
                await asyncio.sleep(KAFKA_READ.delay(1))
                self._changed.set()

    def _leave(self, courier: Courier, deadline_s: float = STOP_DEADLINE_S) -> None:
        """Stop `courier` in the background (`stop` waits for it too)."""
        self._leaving.add(courier)
        task = asyncio.create_task(courier.stop(deadline_s))
        task.add_done_callback(lambda _: self._leaving.discard(courier))

    def _on_gone(self, courier: Courier) -> None:
        """A subscriber answered 410: stop its courier now, retire the subscription."""
        sub_id = courier.subscription.id
        if self._couriers.get(sub_id) is courier:
            del self._couriers[sub_id]
        self._gone[sub_id] = courier.subscription
        self._leave(courier)
        task = asyncio.create_task(self._retire(courier.subscription), name=f"retire-{sub_id}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, gone: Subscription) -> None:
        """Retire `gone` (the version that answered 410), retrying until it lands (or is moot)."""
        part = f"retiring {gone.id}"  # not the courier's part: that one goes with it
        attempt, first = 0, time.monotonic()
        while True:
            current, version = self.store.get(gone.id), self.store.version(gone.id)
            if current is None or version is None or not current.active or current != gone:
                break  # retired already, deleted, or changed by an operator: not ours to do
            try:
                async with asyncio.timeout(self.settings.kafka.request_timeout_s):
                    await self.store.retire(gone.id, version)
                break
            except (KafkaError, KafkaUnavailable, TimeoutError) as exc:
                attempt += 1
                delay = RETIRE.wait(exc, attempt=attempt, elapsed_s=time.monotonic() - first)
                if delay is None:
                    log.error(
                        "subscription %s answered 410 but cannot be retired (%s): it stays"
                        " active and undelivered here; retire it by hand",
                        gone.id,
                        type(exc).__name__,
                    )
                    if self.health is not None:
                        self.health.part("delivery", part).broken(
                            f"answered 410 Gone, retiring it failed for good ({type(exc).__name__})"
                        )
                    return
                log.warning(
                    "subscription %s answered 410; retiring it failed (%s), attempt %d; retrying",
                    gone.id,
                    type(exc).__name__,
                    attempt,
                )
                if self.health is not None:
                    self.health.part("delivery", part).broken(
                        f"answered 410 Gone, retiring it is failing ({type(exc).__name__})"
                    )
                await asyncio.sleep(delay)
        log.info("subscription %s is retired", gone.id)
        if self.health is not None:
            self.health.drop("delivery", part)

    async def _reconcile(self) -> None:
        wanted: dict[str, Subscription] = {}
        for subscription in self.store:
            if not subscription.active:
                continue
            if subscription.protocol == "KAFKA":
                if subscription.id not in self._kafka_noted:
                    self._kafka_noted.add(subscription.id)
                    log.info(
                        "subscription %s is KAFKA: its subscriber reads %s itself",
                        subscription.id,
                        Topics(self.settings.kafka.topic_prefix).deliver(subscription.id),
                    )
                continue
            wanted[subscription.id] = subscription
        for sub_id in [s for s in self._couriers if s not in wanted]:
            log.info("stopping delivery to subscription %s", sub_id)
            self._leave(self._couriers.pop(sub_id))
        for sub_id in [s for s, gone in self._gone.items() if wanted.get(s) != gone]:
            del self._gone[sub_id]  # retired now, or changed since the 410
        for sub_id, subscription in wanted.items():
            if sub_id in self._gone:
                continue  # answered 410: its retirement is being written
            running = self._couriers.get(sub_id)
            if running is not None:
                running.update(subscription)
                continue
            courier = Courier(
                self.settings,
                subscription,
                self._producer,
                self.counts.setdefault(sub_id, Counter()),
                reader=self._reader,
                endpoints=self.endpoints,
                health=self.health,
                on_gone=self._on_gone,
            )
            await courier.start()
            self._couriers[sub_id] = courier
            log.info("delivering to subscription %s", sub_id)
