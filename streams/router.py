"""The router: `gemeentebus.routing` → `gemeentebus.deliver.<subscription id>`.

The routing topic holds every accepted event of every type (the same records as the
`gemeentebus.events.<type>` topics, written with them), keyed like them, so one person's
move and death reach a subscriber in the order the bus accepted them. Each validated event
goes to every subscription that matches it (filters, or a volgindicatie for the person),
stripped to that subscription's `fields`, with the source record's
key, so per-key order carries over into every delivery topic.

Delivery records use the CloudEvents Kafka protocol binding in *structured* content mode:
value = the event as `application/cloudevents+json` (UTF-8), plus `ce_id`, `ce_source`,
`ce_type` and `ce_time` headers for routing and inspection (never data fields). Why not
Avro binary: a projection drops fields that the Avro schema requires, so the published
schema cannot carry it. The full Avro records stay in the events topics.

At-least-once, as in the validator: batches without auto-ack (`noack_take`), every output
sent by one idempotent producer in source order and confirmed by the broker before the batch
is acked; concurrency 1. Routing waits for the subscription set to be read (`ready`) and,
per batch, for every subscription write made before the batch was read (`sync`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import date, datetime
from functools import partial
from typing import Any, Final

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams import attributes, codec
from streams.app import make_app, make_producer
from streams.config import Settings
from streams.envelope import CloudEvent
from streams.exceptions import FieldError, InvalidEvent, KafkaUnavailable
from streams.ingress import Gate
from streams.store import SubscriptionStore
from streams.subscriptions import Subscription, projection
from streams.topics import Topics
from streams.validation import TIMEZONE

__all__ = ["CONTENT_TYPE", "UNDECODABLE", "Router", "delivery_record"]

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "application/cloudevents+json; charset=utf-8"
UNDECODABLE: Final = "router_undecodable"
INTERNAL_ERROR: Final = "router_internal_error"

BATCH_SIZE = 500
_BATCH_WAIT_S = 0.05
_RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)

# (topic, record) in the order they must be sent
_Output = tuple[str, codec.KafkaRecord]


def delivery_record(event: CloudEvent, key: bytes | None) -> codec.KafkaRecord:
    """The record for a delivery topic: structured mode JSON of `event` (already projected)."""
    value = json.dumps(codec.to_json(event), ensure_ascii=False, separators=(",", ":"))
    headers = (
        ("content-type", CONTENT_TYPE.encode()),
        ("ce_id", event.id.encode()),
        ("ce_source", event.source.encode()),
        ("ce_type", event.type.encode()),
        ("ce_time", codec.format_time(event.time).encode()),
    )
    return codec.KafkaRecord(key=key, headers=headers, value=value.encode("utf-8"))


def _record(message: Any) -> codec.KafkaRecord:
    headers = tuple((str(k), bytes(v)) for k, v in (message.headers or ()))
    return codec.KafkaRecord(key=message.key, headers=headers, value=message.value or b"")


class Router:
    """The Faust app and agent that fan validated events out to subscriptions.

    `store` is the subscription set to route against; by default the router starts its own.
    """

    def __init__(self, settings: Settings, *, store: SubscriptionStore | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.kafka.topic_prefix)
        self._key = settings.security.pseudonym_key_bytes()
        self.gate = Gate(self.topics, self._key)
        self.store = (
            store if store is not None else SubscriptionStore(settings, name="router-store")
        )
        self._own_store = store is None
        self.app = make_app(settings, "router")
        self.producer: AIOKafkaProducer = make_producer(settings, "router")
        # One topic for all types, in acceptance order: per key, order holds across types.
        self.source = self.app.topic(
            self.topics.routing, key_serializer="raw", value_serializer="raw"
        )
        self.app.agent(self.source, name="route", concurrency=1)(self._agent)
        self.routed = 0  # source records handled
        self.delivered = 0  # records written to delivery topics

    async def start(self) -> None:
        """Read the subscription set, then start consuming events."""
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

    def route(self, record: codec.KafkaRecord, *, today: date | None = None) -> list[_Output]:
        """The outputs for one events-topic record; never raises for a bad record."""
        try:
            event = codec.from_kafka(record)
        except InvalidEvent as exc:
            error = FieldError("event", UNDECODABLE, "the router could not decode this record")
            return [self._dead_letter(record, [error, *exc.errors])]
        try:
            return self._fan_out(event, record.key, today or datetime.now(TIMEZONE).date())
        except Exception as exc:  # noqa: BLE001 - the agent must never lose a record to a bug
            # the type only: an exception's message could quote event data
            log.error(
                "internal error while routing an event (to the invalid topic): %s",
                type(exc).__name__,
            )
            detail = f"the router failed on this record: {type(exc).__name__}"
            return [self._dead_letter(record, [FieldError("event", INTERNAL_ERROR, detail)])]

    def _fan_out(self, event: CloudEvent, key: bytes | None, today: date) -> list[_Output]:
        person = None
        if event.type in attributes.PERSON_TYPES:
            person = attributes.pseudonym(str(event.data["bsn"]), self._key)
        outputs: list[_Output] = []
        encoded: dict[tuple[str, ...] | None, codec.KafkaRecord] = {}  # same fields, same bytes
        for subscription in self.store.index.match(event, person, today):
            record = encoded.get(subscription.fields)
            if record is None:
                record = delivery_record(self._projected(event, subscription), key)
                encoded[subscription.fields] = record
            outputs.append((self.topics.deliver(subscription.id), record))
        return outputs

    @staticmethod
    def _projected(event: CloudEvent, subscription: Subscription) -> CloudEvent:
        return event.with_data(projection(subscription, event.type)(event.data))

    def _dead_letter(self, record: codec.KafkaRecord, errors: list[FieldError]) -> _Output:
        rejected = self.gate.reject(record, errors)
        return (rejected.topic, rejected.record)

    async def _agent(self, stream: faust.StreamT[Any]) -> None:
        async for batch in stream.noack_take(  # type: ignore[attr-defined]
            BATCH_SIZE, within=_BATCH_WAIT_S
        ):
            # every subscription written before these events were read takes part
            await self._until_done(self.store.sync, "reading subscriptions")
            today = datetime.now(TIMEZONE).date()
            outputs = [
                out for event in batch for out in self.route(_record(event.message), today=today)
            ]
            await self._until_done(partial(produce, self.producer, outputs), "produce")
            for event in batch:
                await stream.ack(event)
            self.routed += len(batch)
            self.delivered += len(outputs)

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


async def produce(producer: AIOKafkaProducer, outputs: Iterable[_Output]) -> None:
    """Send every output in order and wait until the broker has all of them (acks=all)."""
    futures = [
        await producer.send(topic, record.value, key=record.key, headers=list(record.headers))
        for topic, record in outputs
    ]
    if futures:
        await asyncio.gather(*futures)
