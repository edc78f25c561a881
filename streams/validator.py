"""The validating stream: `gemeentebus.ingress` → `gemeentebus.events.<type>` | `.invalid`.

At-least-once, by construction:
- records are read in batches without auto-ack (`noack_take`), judged, produced with the
  idempotent producer, and acked only after the broker confirmed every record of the batch;
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
from collections.abc import Iterable
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams import metrics
from streams.app import make_app, make_producer
from streams.codec import KafkaRecord
from streams.config import Settings
from streams.exceptions import FieldError
from streams.ingress import Accepted, Gate, Rejected
from streams.topics import Topics

__all__ = ["BATCH_SIZE", "Validator", "outcome_for"]

log = logging.getLogger(__name__)

BATCH_SIZE = 500
_BATCH_WAIT_S = 0.05
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


class Validator:
    """The Faust app and agent that validate ingress records."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.kafka.topic_prefix)
        self.gate = Gate(self.topics, settings.security.pseudonym_key_bytes())
        self.app = make_app(settings, "validator")
        self.producer: AIOKafkaProducer = make_producer(settings, "validator")
        self.source = self.app.topic(
            self.topics.ingress, key_serializer="raw", value_serializer="raw"
        )
        self.app.agent(self.source, name="validate", concurrency=1)(self._agent)
        self.processed = 0

    async def start(self) -> None:
        await self.producer.start()
        await self.app.start()

    async def stop(self) -> None:
        await self.app.stop()
        await self.producer.stop()

    async def _agent(self, stream: faust.StreamT[Any]) -> None:
        async for batch in stream.noack_take(  # type: ignore[attr-defined]
            BATCH_SIZE, within=_BATCH_WAIT_S
        ):
            started = time.perf_counter()
            outcomes = [outcome_for(self.gate, _record(event.message)) for event in batch]
            await self._produce_until_delivered(outcomes)
            for event in batch:
                await stream.ack(event)
            self.processed += len(batch)
            metrics.observe_batch(outcomes, "kafka", time.perf_counter() - started)

    async def _produce_until_delivered(self, outcomes: Iterable[Accepted | Rejected]) -> None:
        pending = list(outcomes)
        attempt = 0
        while True:
            try:
                await produce(self.producer, pending)
                return
            except KafkaError as exc:
                # Not acked: on a crash the records come back; here we try again.
                delay = _RETRY_BACKOFF_S[min(attempt, len(_RETRY_BACKOFF_S) - 1)]
                log.warning("produce failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                attempt += 1
                await asyncio.sleep(delay)


async def produce(producer: AIOKafkaProducer, outcomes: Iterable[Accepted | Rejected]) -> None:
    """Send every outcome's record and wait until the broker has all of them (acks=all)."""
    futures = [
        await producer.send(topic, o.record.value, key=o.record.key, headers=list(o.record.headers))
        for o in outcomes
        for topic in (o.topic, *getattr(o, "also", ()))
    ]
    if futures:
        await asyncio.gather(*futures)
