"""The delivery log: one record per delivery attempt, in `gemeentebus.deliveries` (SPEC §5).

For person events this is the Logboek Dataverwerkingen: it answers "who received data about
this person, when, and why". It therefore holds the person's *pseudonym* (never the BSN),
the subscription, the purpose it was delivered under, and the outcome. Kafka key: the
subscription id, so one subscription's attempts stay in order on one partition.

This module owns the log both ways: `EventRef` (who a deliver-topic record is, read from its
headers or JSON without its data), `delivery_attempt` and `log_attempt` to write an attempt,
`encode_attempt` / `decode_attempt` for its bytes, `shortened` for one too large to write.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Final, Literal

from aiokafka import AIOKafkaProducer

from streams.contract.attributes import PERSON_TYPES
from streams.contract.headers import RawHeaders
from streams.kafka.topics import Topics

__all__ = [
    "CUT_MARK",
    "OUTCOMES",
    "DeliveryAttempt",
    "EventRef",
    "Outcome",
    "decode_attempt",
    "delivery_attempt",
    "encode_attempt",
    "event_ref",
    "log_attempt",
    "shortened",
]

Outcome = Literal["delivered", "retry", "dead_lettered", "retired", "redriven"]
OUTCOMES: Final = ("delivered", "retry", "dead_lettered", "retired", "redriven")
CUT_MARK: Final = "…[cut]"  # ends a field `shortened` cut
_SHORT: Final = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryAttempt:
    """One attempt to deliver one event to one subscription."""

    subscription: str
    event_id: str
    source: str
    type: str
    outcome: Outcome
    attempt: int
    at: datetime
    purpose: str
    event_time: datetime | None = None
    status: int | None = None  # the HTTP status of a webhook answer
    error: str | None = None  # short, no personal data: "timeout", "HTTP 500", ...
    pseudonym: str | None = None  # person events: whose data this was (keyed hash of the BSN)
    replay: bool = False
    protocol: str = "HTTP"

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of the record."""
        # flat fields only: a shallow copy, not `asdict`'s deep one (this runs per delivery)
        out = {name: getattr(self, name) for name in _FIELDS}
        out["at"] = self.at.astimezone(UTC).isoformat()
        out["event_time"] = (
            self.event_time.astimezone(UTC).isoformat() if self.event_time is not None else None
        )
        return out


_FIELDS: Final = tuple(f.name for f in fields(DeliveryAttempt))


def encode_attempt(attempt: DeliveryAttempt) -> tuple[bytes, bytes]:
    """The Kafka key and value of an attempt."""
    value = json.dumps(attempt.as_dict(), separators=(",", ":"), sort_keys=True)
    return attempt.subscription.encode(), value.encode()


def decode_attempt(value: bytes) -> DeliveryAttempt:
    """An attempt read back from the delivery log; ValueError when it is not one."""
    raw = json.loads(value)
    if not isinstance(raw, dict) or raw.get("outcome") not in OUTCOMES:
        raise ValueError("not a delivery attempt")
    raw["at"] = datetime.fromisoformat(raw["at"])
    if raw.get("event_time"):
        raw["event_time"] = datetime.fromisoformat(raw["event_time"])
    return DeliveryAttempt(**raw)


def shortened(attempt: DeliveryAttempt) -> DeliveryAttempt:
    """The attempt with its free-text fields (event id, source, type, error, pseudonym) cut to
    200 characters, each cut one ending in `CUT_MARK`: what the delivery log holds of an
    attempt whose full record the topic refused as too large (a poison record's odd id).
    `attempt` itself when no field is that long."""

    def cut(text: str | None) -> str | None:
        if text is None or len(text) <= _SHORT:
            return text
        return text[:_SHORT] + CUT_MARK

    texts = (attempt.event_id, attempt.source, attempt.type, attempt.error, attempt.pseudonym)
    if all(text is None or len(text) <= _SHORT for text in texts):
        return attempt  # nothing to cut (the common case: this runs per delivery)
    return dataclasses.replace(
        attempt,
        event_id=cut(attempt.event_id) or "",
        source=cut(attempt.source) or "",
        type=cut(attempt.type) or "",
        error=cut(attempt.error),
        pseudonym=cut(attempt.pseudonym),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRef:
    """Who an event in a deliver topic is, without its data: for logs and the delivery log."""

    id: str
    source: str
    type: str
    time: datetime | None
    pseudonym: str | None  # person events: the record key is the BSN pseudonym
    replay: bool


def event_ref(
    key: bytes | None,
    headers: RawHeaders,
    value: bytes | None,
    *,
    body: dict[str, Any] | None = None,
) -> EventRef:
    """The identity of a deliver-topic record (structured mode): `ce_*` headers, else the JSON
    (`body`, when the caller parsed it already). Never raises: an unreadable record gets what
    can be read of it, empty strings for the rest."""
    found = {name: raw.decode("utf-8", "replace") for name, raw in headers if raw is not None}
    value = value or b""
    if body is None:
        body = {}
        if not {"ce_id", "ce_source", "ce_type"} <= found.keys() or b'"replay"' in value:
            with contextlib.suppress(ValueError, RecursionError):  # not JSON, too deep
                parsed = json.loads(value)
                body = parsed if isinstance(parsed, dict) else {}
    event_type = found.get("ce_type") or str(body.get("type", ""))
    raw_time = found.get("ce_time") or body.get("time")
    time = None
    if isinstance(raw_time, str):
        with contextlib.suppress(ValueError):
            time = datetime.fromisoformat(raw_time)
    pseudonym = None
    if event_type in PERSON_TYPES and key:
        pseudonym = key.decode("ascii", "replace")
    return EventRef(
        id=found.get("ce_id") or str(body.get("id", "")),
        source=found.get("ce_source") or str(body.get("source", "")),
        type=event_type,
        time=time,
        pseudonym=pseudonym,
        replay="ce_replay" in found or "replay" in body,
    )


async def log_attempt(
    producer: AIOKafkaProducer, topics: Topics, attempt: DeliveryAttempt
) -> asyncio.Future[Any]:
    """Send one delivery-log record (made by `delivery_attempt`); returns the future that
    resolves when the broker has it."""
    key, value = encode_attempt(attempt)
    future: asyncio.Future[Any] = await producer.send(topics.deliveries, value, key=key)
    return future


def delivery_attempt(
    *,
    subscription: str,
    purpose: str,
    ref: EventRef,
    outcome: Outcome,
    attempt: int,
    status: int | None = None,
    error: str | None = None,
    protocol: str = "HTTP",
) -> DeliveryAttempt:
    """The delivery-log record of one attempt on the event `ref`, made now."""
    return DeliveryAttempt(
        subscription=subscription,
        event_id=ref.id,
        source=ref.source,
        type=ref.type,
        outcome=outcome,
        attempt=attempt,
        at=datetime.now(UTC),
        purpose=purpose,
        event_time=ref.time,
        status=status,
        error=error,
        pseudonym=ref.pseudonym,
        replay=ref.replay,
        protocol=protocol,
    )
