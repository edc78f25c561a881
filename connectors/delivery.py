"""The dispatcher: every HTTP subscription's deliver topic, pushed to its webhook.

One `Courier` per active HTTP subscription, each with its own consumer (group
`<prefix>.deliver.<id>`, manual commits) and its own HTTP session: a slow or dead subscriber
holds up only its own courier. KAFKA subscriptions read their deliver topic themselves.

How a courier orders, commits, retries and dead-letters: see `connectors.courier`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from aiokafka.errors import KafkaError

from connectors.courier import CONCURRENCY, KAFKA_RETRY_S, STOP_DEADLINE_S, Courier, backoff
from streams.app import make_producer
from streams.config import Settings
from streams.store import SubscriptionStore
from streams.subscriptions import Subscription
from streams.topics import Topics, bus_topics, create_topics

__all__ = ["CONCURRENCY", "Courier", "Dispatcher", "backoff"]  # Courier & co. re-exported

log = logging.getLogger(__name__)


class Dispatcher:
    """Runs a `Courier` for every active HTTP subscription of `store`, following its changes.

    The store is the caller's: started before `start()`, stopped after `stop()`.
    `counts[subscription id][outcome]` counts what happened (for tests and metrics).
    """

    def __init__(self, settings: Settings, store: SubscriptionStore) -> None:
        self.settings = settings
        self.store = store
        self.counts: dict[str, Counter[str]] = {}
        self._producer = make_producer(settings, "dispatcher")
        self._couriers: dict[str, Courier] = {}
        self._changed = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self._kafka_noted: set[str] = set()

    @property
    def running(self) -> frozenset[str]:
        """The ids of the subscriptions being delivered now."""
        return frozenset(self._couriers)

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
        await self.store.ready()
        self.store.changes.append(self._on_change)
        await self._reconcile()
        self._follower = asyncio.create_task(self._follow(), name="dispatcher-follow")

    async def stop(self, deadline_s: float = STOP_DEADLINE_S) -> None:
        """Stop every courier: in-flight attempts get up to `deadline_s`; finished work is
        committed."""
        with contextlib.suppress(ValueError):
            self.store.changes.remove(self._on_change)
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        couriers, self._couriers = list(self._couriers.values()), {}
        await asyncio.gather(*(c.stop(deadline_s) for c in couriers), *self._stopping)
        await self._producer.stop()

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
                await asyncio.sleep(KAFKA_RETRY_S)
                self._changed.set()

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
            courier = self._couriers.pop(sub_id)
            log.info("stopping delivery to subscription %s", sub_id)
            task = asyncio.create_task(courier.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        for sub_id, subscription in wanted.items():
            running = self._couriers.get(sub_id)
            if running is not None:
                if not running.retired:  # after a 410 the store says `retired` in a moment
                    running.update(subscription)
                continue
            courier = Courier(
                self.settings,
                subscription,
                self.store,
                self._producer,
                self.counts.setdefault(sub_id, Counter()),
            )
            await courier.start()
            self._couriers[sub_id] = courier
            log.info("delivering to subscription %s", sub_id)
