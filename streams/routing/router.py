"""Routing: each accepted event → `gemeentebus.deliver.<subscription id>` of every match.

Routing happens where an event is accepted, in the same pass: the validator routes what it
reads from `gemeentebus.ingress`, the HTTP API what it accepts, and each sends an event's
delivery records right behind its events-topic record, acked together. One person's events
share an ingress partition, so a move and a death reach every subscriber in the order the
bus accepted them, across types. Each event goes to every subscription that matches it
(filters, or a volgindicatie for the person), stripped to that subscription's `fields`, with
the events-topic record's key, so per-key order carries over into every delivery topic.

Delivery records use the CloudEvents Kafka protocol binding in *structured* content mode:
value = the event as `application/cloudevents+json` (UTF-8), plus `ce_id`, `ce_source`,
`ce_type` and `ce_time` headers for routing and inspection (never data fields). Why not
Avro binary: a projection drops fields that the Avro schema requires, so the published
schema cannot carry it. The full Avro records stay in the events topics.

Callers wait for the subscription set to be read (`ready`) and, per batch, for every
subscription write made before the batch was read (`sync`), so a subscription that got its
201 receives every event published after it.
"""

from __future__ import annotations

import json
import logging
from datetime import date
from typing import Final

from streams.config import Settings
from streams.contract import attributes, codec
from streams.contract.envelope import CloudEvent
from streams.contract.record import KafkaRecord, Unreadable
from streams.contract.rules import dutch_today
from streams.exceptions import FieldError, InvalidEvent, RoutingFailed
from streams.ingress.gate import Gate
from streams.kafka.topics import Topics
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription, projection

__all__ = ["CONTENT_TYPE", "UNDECODABLE", "Output", "Router", "delivery_record"]

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "application/cloudevents+json; charset=utf-8"
UNDECODABLE: Final = "router_undecodable"
# What `json.dumps(..., ensure_ascii=False, separators=(",", ":"))` makes, built once.
_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

# (topic, record) in the order they must be sent; a dead letter keeps null header values
Output = tuple[str, KafkaRecord | Unreadable]


def delivery_record(event: CloudEvent, key: bytes | None) -> KafkaRecord:
    """The record for a delivery topic: structured mode JSON of `event`, an event the bus
    accepted or read from an events topic (then projected)."""
    body = codec.to_json(event, checked=True)
    value = _JSON.encode(body)
    headers = (
        ("content-type", CONTENT_TYPE.encode()),
        ("ce_id", event.id.encode()),
        ("ce_source", event.source.encode()),
        ("ce_type", event.type.encode()),
        ("ce_time", codec.format_time(event.time).encode()),
    )
    return KafkaRecord(key=key, headers=headers, value=value.encode("utf-8"))


class Router:
    """Fans validated events out to the subscriptions of `store` that match them.

    Pure: no Kafka client here. The validator calls `fan_out` for each event it accepts and
    sends the outputs with the event's own record, in the order of its ingress partition;
    the HTTP API does the same for what it accepts. `route` decodes an events-topic record
    first (benchmarks and tools).
    """

    def __init__(self, settings: Settings, *, store: SubscriptionStore) -> None:
        self.topics = Topics(settings.kafka.topic_prefix)
        self._key = settings.security.pseudonym_key_bytes()
        self.gate = Gate(self.topics, self._key)
        self.store = store

    def route(self, record: KafkaRecord, *, today: date | None = None) -> list[Output]:
        """The outputs for one events-topic record; never raises for a bad record."""
        try:
            event = codec.from_kafka(record)
        except InvalidEvent as exc:
            error = FieldError("event", UNDECODABLE, "the router could not decode this record")
            return [self._dead_letter(record, [error, *exc.errors])]
        return self.fan_out(event, record, today=today)

    def fan_out(
        self, event: CloudEvent, record: KafkaRecord, *, today: date | None = None
    ) -> list[Output]:
        """The delivery records of an accepted `event` (whose events-topic record is
        `record`), or `RoutingFailed` when the bus failed on it (a bug, not bad input).

        No dead letter here: the caller owns the event's fate. An event delivered to nobody
        must not count as accepted, so the validator dead-letters the *ingress* record
        without writing the event, and the HTTP API answers 500 with nothing published.
        """
        try:
            return self._fan_out(event, record.key, today or dutch_today())
        except Exception as exc:
            # the type only: an exception's message could quote event data
            raise RoutingFailed(type(exc).__name__) from exc

    def _fan_out(self, event: CloudEvent, key: bytes | None, today: date) -> list[Output]:
        person = None
        if event.type in attributes.PERSON_TYPES:
            person = attributes.pseudonym(str(event.data["bsn"]), self._key)
        outputs: list[Output] = []
        encoded: dict[tuple[str, ...] | None, KafkaRecord] = {}  # same fields, same bytes
        for subscription in self.store.index.match(event, person, today):
            fields = subscription.fields_for(event.type)
            record = encoded.get(fields)
            if record is None:
                record = delivery_record(self._projected(event, subscription), key)
                encoded[fields] = record
            outputs.append((self.topics.deliver(subscription.id), record))
        return outputs

    @staticmethod
    def _projected(event: CloudEvent, subscription: Subscription) -> CloudEvent:
        return event.with_data(projection(subscription, event.type)(event.data))

    def _dead_letter(self, record: KafkaRecord, errors: list[FieldError]) -> Output:
        rejected = self.gate.reject(record, errors)
        return (rejected.topic, rejected.record)
