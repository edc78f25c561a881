"""Logboek Dataverwerkingen: who received data about a person, when, and why (SPEC §5).

Reads the delivery log (`gemeentebus.deliveries`): one subscription's attempts, or every
delivery of one person's events, found by the person's pseudonym — the BSN itself is never
stored, so the question is asked with a BSN that is turned into its pseudonym here.
The log is scanned from the start: fine for an audit question, not for a hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from streams.config import Settings
from streams.contract import attributes, values
from streams.delivery.log import DeliveryAttempt, decode_attempt
from streams.kafka.clients import make_consumer
from streams.kafka.topics import Topics, partitions

__all__ = ["PersonDelivery", "deliveries_of", "person_deliveries"]


@dataclass(frozen=True, slots=True)
class PersonDelivery:
    """One delivery of data about a person: to which subscription, when, under which purpose."""

    subscription: str
    purpose: str
    at: str
    event_id: str
    type: str
    replay: bool

    @classmethod
    def of(cls, attempt: DeliveryAttempt) -> PersonDelivery:
        return cls(
            subscription=attempt.subscription,
            purpose=attempt.purpose,
            at=attempt.at.isoformat(),
            event_id=attempt.event_id,
            type=attempt.type,
            replay=attempt.replay,
        )


async def _scan(
    settings: Settings, keep: Callable[[bytes | None, DeliveryAttempt], bool]
) -> list[DeliveryAttempt]:
    topic = Topics(settings.kafka.topic_prefix).deliveries
    consumer = make_consumer(settings, "audit")
    await consumer.start()
    found: list[DeliveryAttempt] = []
    try:
        parts = await partitions(settings.kafka, [topic])
        if not parts:
            return found
        ends = await consumer.end_offsets(parts)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        todo = {tp for tp in parts if ends[tp] > 0}
        while todo:
            for tp, records in (await consumer.getmany(timeout_ms=500, max_records=5000)).items():
                for record in records:
                    try:
                        attempt = decode_attempt(record.value or b"")
                    except (ValueError, TypeError, KeyError):
                        continue  # not ours to judge here; the log holds only attempts
                    if keep(record.key, attempt):
                        found.append(attempt)
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        await consumer.stop()
    return sorted(found, key=lambda a: a.at)


async def deliveries_of(
    settings: Settings, subscription_id: str, *, limit: int = 100
) -> list[DeliveryAttempt]:
    """The last `limit` delivery attempts of one subscription, oldest first."""
    key = subscription_id.encode()
    attempts = await _scan(settings, lambda k, a: k == key and a.subscription == subscription_id)
    return attempts[-limit:]


async def person_deliveries(settings: Settings, bsn: str) -> list[PersonDelivery]:
    """Every delivery of data about the person with this BSN; ValueError for a bad BSN."""
    if not (values.is_nine_digits(bsn) and values.elfproef(bsn)):
        raise ValueError("not a BSN (9 digits, elfproef)")
    who = attributes.pseudonym(bsn, settings.security.pseudonym_key_bytes())
    attempts = await _scan(settings, lambda _k, a: a.pseudonym == who and a.outcome == "delivered")
    return [PersonDelivery.of(a) for a in attempts]
