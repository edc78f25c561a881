"""The gate every published event passes, whether it came over HTTP or through Kafka.

`Gate.admit` checks an event against the whole contract (Avro structure, SPEC §1 rules) and
fills in what the bus derives (routing attributes, subject, partition key); `Gate.accept`
turns it into the record for its events topic, `Gate.reject` into the byte-for-byte record
for `gemeentebus.invalid`. Pure: no Kafka client here.

The publisher's grant (`streams.auth.authorize_publish`) is checked before all else: by the
HTTP API for a request (a 403), and by `Gate.from_record` for a record from a Kafka
publisher's own ingress topic, whose refusal is a dead letter with the same code
(`type_not_granted`, `source_not_granted`). A record of the shared ingress topic is judged
without a grant: only trusted principals may write there (`gemeentebus acls apply`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final

from streams.auth import Client, Forbidden, authorize_publish
from streams.contract import attributes, codec, values
from streams.contract.avrodata import DataBinding, data_binding, write_data
from streams.contract.envelope import CloudEvent
from streams.contract.headers import (
    DETAIL_HEADER,
    ERROR_HEADER,
    ORDER_HEADER,
    TRUNCATED_HEADER,
    header_text,
    redacted,
)
from streams.contract.record import KafkaRecord, Unreadable
from streams.contract.rules import Verdict, examine
from streams.contract.schemas import registry
from streams.exceptions import FieldError, InvalidEvent
from streams.kafka.topics import Topics

__all__ = [
    "Accepted",
    "Gate",
    "Rejected",
]

_OURS: Final = frozenset({ERROR_HEADER, DETAIL_HEADER, TRUNCATED_HEADER})
_DETAIL_LIMIT: Final = 4000

# Extensions a publisher may send besides the routing attributes: W3C trace context only.
# Anything else would become a Kafka header, and headers must carry no personal data.
_PUBLISHER_EXTENSIONS: Final = frozenset({"traceparent", "tracestate"})
# Per type: the extensions an event may carry (routing attributes are the bus's to check).
_ALLOWED_EXTENSIONS: Final = {
    t: _PUBLISHER_EXTENSIONS | frozenset(names)
    for t, names in attributes.ROUTING_ATTRIBUTES.items()
}


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid event and the record that carries it to its events topic."""

    event: CloudEvent
    topic: str
    record: KafkaRecord


@dataclass(frozen=True, slots=True)
class Rejected:
    """Rejected input: every error, and the record for the invalid topic (an `Unreadable`
    when the input was one: its null header values stay null)."""

    errors: tuple[FieldError, ...]
    topic: str
    record: KafkaRecord | Unreadable

    @property
    def code(self) -> str:
        return self.errors[0].code if self.errors else "invalid"

    @property
    def event_type(self) -> str | None:
        """The `ce_type` the input claimed, if readable (for metrics)."""
        return header_text(self.record.headers, "ce_type")


def _refusal(publisher: Client, record: KafkaRecord) -> FieldError | None:
    """Why `publisher` may not publish this record (its claimed `ce_type` and `ce_source`,
    as the HTTP API checks the claimed type and source), or None. Without a type, decoding
    says what is wrong; a duplicated header is rejected by decoding too, so the claim
    checked here is the event that would be routed."""
    event_type = header_text(record.headers, "ce_type")
    if event_type is None:
        return None
    try:
        authorize_publish(publisher, event_type, header_text(record.headers, "ce_source"))
    except Forbidden as exc:
        # Not `exc.message`: it repeats the claimed value, and a dead letter's detail
        # carries no input (the input is in the record itself, byte for byte).
        what = {"source_not_granted": "source"}.get(exc.code, "type")
        message = f"client {publisher.id} may not publish this {what} (its publish grant)"
        return FieldError(what, exc.code, message)
    return None


class Gate:
    """Validates events and makes their Kafka records, for one topic namespace and key."""

    def __init__(self, topics: Topics, pseudonym_key: bytes) -> None:
        if not pseudonym_key:
            raise ValueError("the pseudonym key is empty")
        self._topics = topics
        self._key = attributes.PseudonymKey(pseudonym_key)
        self._last_order = 0

    def admit(
        self, event: CloudEvent, *, today: date | None = None, now: datetime | None = None
    ) -> CloudEvent:
        """The event with its derived attributes, or `InvalidEvent` listing every error."""
        return self._admit(event, today, now)[0]

    def _admit(
        self,
        event: CloudEvent,
        today: date | None,
        now: datetime | None,
        read: DataBinding | None = None,
    ) -> tuple[CloudEvent, Verdict]:
        allowed = _ALLOWED_EXTENSIONS.get(event.type, _PUBLISHER_EXTENSIONS)
        errors = [
            FieldError(
                f"extensions.{name}",
                "extension_not_allowed",
                "extension attribute not allowed for this type",
            )
            for name in event.extensions
            if name not in allowed
            and values.is_extension_name(name)  # a malformed name is validation's error
        ]
        verdict = examine(event, today=today, now=now, read=read)
        errors += verdict.errors
        if errors:
            raise InvalidEvent(errors)
        derived = verdict.routing
        if derived is None:  # examine always reads the data of a valid event; to be sure
            derived = attributes.routing_attributes(event.type, event.data)
        admitted = CloudEvent(
            id=event.id,
            source=event.source,
            type=event.type,
            time=event.time,
            dataschema=event.dataschema,
            data=event.data,
            subject=attributes.subject_for(event.type, event.data),
            sequence=event.sequence,
            extensions={**event.extensions, **derived},
        )
        return admitted, verdict

    def accept(
        self, event: CloudEvent, *, today: date | None = None, now: datetime | None = None
    ) -> Accepted:
        """Admit the event and encode it for `gemeentebus.events.<type>`."""
        return self._accept(event, None, today, now)

    def _accept(
        self, event: CloudEvent, value: bytes | None, today: date | None, now: datetime | None
    ) -> Accepted:
        # `value`: the Avro bytes of `event.data` under the current schema, read from Kafka:
        # `data` is what fastavro read, so checking its exactness needs less (`read`).
        read = None if value is None else data_binding(registry().current(event.type))
        admitted, verdict = self._admit(event, today, now, read)
        key = attributes.partition_key(admitted.type, admitted.data, self._key)
        if verdict.exact is None:
            value = None  # not provably exact: `to_kafka` checks and encodes as ever
        elif value is None:
            value = write_data(verdict.exact, admitted.data)  # exact: passes the Avro check
        else:  # what fastavro reads and other Avro readers may refuse is written again
            value = verdict.exact.written(admitted.data, value)
        record = codec.to_kafka(admitted, key=key, value=value)
        self._last_order = max(time.time_ns(), self._last_order + 1)
        order = (ORDER_HEADER, str(self._last_order).encode())
        record = KafkaRecord(key=record.key, headers=(*record.headers, order), value=record.value)
        return Accepted(
            event=admitted,
            topic=self._topics.events(admitted.type),
            record=record,
        )

    def from_record(
        self, record: KafkaRecord, *, publisher: Client | None = None
    ) -> Accepted | Rejected:
        """Judge one ingress record; never raises for bad input.

        `publisher`: the Kafka publisher whose own ingress topic the record was read from; a
        type or source outside its grant rejects the record before anything else is read.
        None for the shared ingress topic (no grant applies)."""
        if publisher is not None:
            refusal = _refusal(publisher, record)
            if refusal is not None:
                return self.reject(record, [refusal])
        try:
            event, value = codec.from_kafka_with_value(record)
            return self._accept(event, value, None, None)
        except InvalidEvent as exc:
            return self.reject(record, exc.errors)

    def reject(
        self,
        original: KafkaRecord | Unreadable,
        errors: Sequence[FieldError],
        *,
        annotations: tuple[tuple[str, bytes], ...] = (),
    ) -> Rejected:
        """The record for the invalid topic: the input's value byte for byte, its headers with
        every value that may carry a BSN redacted (`headers.redacted`), then `annotations`
        (what the bus itself says of the input) and the error headers."""
        errors = tuple(errors) or (FieldError("event", "invalid", "rejected"),)
        detail = "; ".join(f"{e.path}: {e.code}: {e.message}" for e in errors)
        ours = (
            (ERROR_HEADER, errors[0].code.encode()),
            (DETAIL_HEADER, detail[:_DETAIL_LIMIT].encode()),
        )
        # The publisher's key is not kept: it may be anything, a BSN included.
        record: KafkaRecord | Unreadable
        if isinstance(original, Unreadable):
            raw = redacted(tuple((k, v) for k, v in original.headers if k not in _OURS))
            # Kafka takes no record without both key and value: a tombstone's dead letter
            # (its key dropped) has an empty value, and the code `null_value` says so.
            value = b"" if original.value is None else original.value
            raw = (*raw, *annotations, *ours)
            record = Unreadable(key=None, headers=raw, value=value, error=errors[0])
        else:
            kept = redacted(tuple((k, v) for k, v in original.headers if k not in _OURS))
            kept = (*kept, *annotations, *ours)
            record = KafkaRecord(key=None, headers=kept, value=original.value)
        return Rejected(errors=errors, topic=self._topics.invalid, record=record)

    @staticmethod
    def truncated(rejected: Rejected, keep: int) -> Rejected:
        """The same dead letter with only the first `keep` bytes of its value, for an invalid
        topic that refused the whole: `gemeentebus_truncated` says how large it was."""
        record = rejected.record
        size = len(record.value or b"")
        headers = (*record.headers, (TRUNCATED_HEADER, str(size).encode()))
        value = None if record.value is None else record.value[: max(0, keep)]
        smaller: KafkaRecord | Unreadable
        if isinstance(record, Unreadable):
            smaller = Unreadable(key=None, headers=headers, value=value, error=record.error)
        else:
            clean = tuple((k, v) for k, v in headers if v is not None)
            smaller = KafkaRecord(key=None, headers=clean, value=value or b"")
        return Rejected(errors=rejected.errors, topic=rejected.topic, record=smaller)
