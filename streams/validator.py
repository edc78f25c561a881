"""The stream worker: `gemeentebus.ingress` → `gemeentebus.events.<type>` and the
`gemeentebus.deliver.<id>` topics of every matching subscription | `.invalid`.

One pass per record: judge it (the gate), and for an accepted event, route it
(`streams.router`): its events-topic record goes out first, its delivery records right
behind it, all confirmed together. One hop from ingress to every subscriber, one write of
the event itself.

At-least-once, by construction:
- records are read in batches without auto-ack (`EventBatches`: whatever has arrived, no
  batching window), judged and routed, produced with the idempotent producer, and acked
  only after the broker confirmed every record of the batch;
- each batch is routed against every subscription written before it was read
  (`SubscriptionStore.sync`), so a subscription that got its 201 gets what follows;
- nothing escapes the loop: bad input is a `Rejected` record, an unexpected error while
  judging one record dead-letters that record with code `internal_error`, and a failed
  produce is retried (never acked) until it succeeds or the worker stops;
- concurrency is 1: order per key is the order of the ingress partition. Scale out with
  partitions and worker processes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams import metrics
from streams.app import EventBatches, make_app, make_producer, send_all
from streams.codec import KafkaRecord
from streams.config import Settings
from streams.exceptions import FieldError, KafkaUnavailable
from streams.ingress import Accepted, Gate, Rejected
from streams.router import Output, Router
from streams.store import SubscriptionStore
from streams.topics import Topics
from streams.validation import dutch_today

__all__ = ["BATCH_SIZE", "Validator", "outcome_for", "outputs_for", "produce"]

log = logging.getLogger(__name__)

BATCH_SIZE = 500
_RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


def outcome_for(gate: Gate, record: KafkaRecord) -> Accepted | Rejected:
    """Judge one ingress record; any unexpected failure becomes a dead letter, not a crash."""
    try:
        return gate.from_record(record)
    except Exception as exc:  # noqa: BLE001 - the agent must never lose a record to a bug
        # The type only: an exception's text may quote the input, and the input may be a BSN.
        log.error(
            "internal error (%s) while validating a record; sent to the invalid topic",
            type(exc).__name__,
        )
        error = FieldError(
            "event", "internal_error", f"the bus failed on this record: {type(exc).__name__}"
        )
        return gate.reject(record, [error])


def _record(message: Any) -> KafkaRecord:
    headers = tuple((str(k), bytes(v)) for k, v in (message.headers or ()))
    return KafkaRecord(key=message.key, headers=headers, value=message.value or b"")


def outputs_for(router: Router, outcomes: Iterable[Accepted | Rejected]) -> list[Output]:
    """Every record the outcomes produce, in send order: each accepted event's own record,
    then its delivery records; each rejected input's dead letter."""
    today = dutch_today()
    outputs: list[Output] = []
    for outcome in outcomes:
        outputs.append((outcome.topic, outcome.record))
        if isinstance(outcome, Accepted):
            outputs += router.fan_out(outcome.event, outcome.record, today=today)
    return outputs


class Validator:
    """The Faust app and agent that validate and route ingress records.

    `store` is the subscription set to route against; by default the validator starts its own.
    """

    def __init__(self, settings: Settings, *, store: SubscriptionStore | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.kafka.topic_prefix)
        self.gate = Gate(self.topics, settings.security.pseudonym_key_bytes())
        self.store = (
            store if store is not None else SubscriptionStore(settings, name="validator-store")
        )
        self._own_store = store is None
        self.router = Router(settings, store=self.store)
        self.app = make_app(settings, "validator")
        self.producer: AIOKafkaProducer = make_producer(settings, "validator")
        self.source = self.app.topic(
            self.topics.ingress, key_serializer="raw", value_serializer="raw"
        )
        self.app.agent(self.source, name="validate", concurrency=1)(self._agent)
        self.processed = 0  # ingress records handled
        self.delivered = 0  # records written to delivery topics

    async def start(self) -> None:
        """Read the subscription set, then start consuming ingress."""
        if self._own_store:
            await self.store.start()
        await self.store.ready()  # never route against an empty or partial set
        await self.producer.start()
        await self.app.start()

    async def stop(self) -> None:
        await self.app.stop()
        await self.producer.stop()
        if self._own_store:
            await self.store.stop()

    async def _agent(self, stream: faust.StreamT[Any]) -> None:
        batches = EventBatches(stream, BATCH_SIZE)
        async for batch in batches:
            started = time.perf_counter()
            # every subscription written before these records were read takes part
            await self._until_done(self.store.sync, "reading subscriptions")
            outcomes = [outcome_for(self.gate, _record(event.message)) for event in batch]
            outputs = outputs_for(self.router, outcomes)
            await self._until_done(partial(send_all, self.producer, outputs), "produce")
            await batches.ack(batch)
            self.processed += len(batch)
            self.delivered += len(outputs) - len(outcomes)
            metrics.observe_batch(outcomes, "kafka", time.perf_counter() - started)

    async def _until_done(self, step: Callable[[], Awaitable[None]], what: str) -> None:
        attempt = 0
        while True:
            try:
                await step()
                return
            except (KafkaError, KafkaUnavailable) as exc:
                # Not acked: on a crash the records come back; here we try again.
                delay = _RETRY_BACKOFF_S[min(attempt, len(_RETRY_BACKOFF_S) - 1)]
                log.warning("%s failed (%s); retrying in %.1fs", what, type(exc).__name__, delay)
                attempt += 1
                await asyncio.sleep(delay)


async def produce(producer: AIOKafkaProducer, outcomes: Iterable[Accepted | Rejected]) -> None:
    """Send every outcome's record and wait until the broker has all of them (acks=all)."""
    await send_all(producer, ((o.topic, o.record) for o in outcomes))
