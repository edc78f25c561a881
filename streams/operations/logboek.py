"""Logboek Dataverwerkingen: who received data about a person, when, and why (SPEC §5).

Reads the delivery log (`gemeentebus.deliveries`): one subscription's attempts, or every
delivery of one person's events, found by the person's pseudonym — the BSN itself is never
stored, so the question is asked with a BSN that is turned into its pseudonym here.
A person's question scans the log from the start: fine for an audit question, not for a hot
path. One subscription's attempts share its key, so `delivery_page` reads only that key's
partition, from the end backwards, and at most `limits.scan_max_records` records a call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import TopicPartition

from streams.config import Settings
from streams.contract import attributes, values
from streams.delivery.log import DeliveryAttempt, decode_attempt
from streams.kafka.backwards import backwards
from streams.kafka.clients import make_consumer
from streams.kafka.partitioner import KeyPartitioner
from streams.kafka.topics import Topics, partitions

__all__ = ["DeliveryPage", "PersonDelivery", "deliveries_of", "delivery_page", "person_deliveries"]

_CHUNK = 500  # offsets read at a time, backwards


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    """Some of one subscription's attempts, oldest first; `before`: where the next page (older
    attempts) starts, None when there are none; `scanned`: records read for it."""

    attempts: list[DeliveryAttempt]
    before: int | None
    scanned: int


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
    """The last `limit` delivery attempts of one subscription, oldest first (of what one
    page's budget reaches)."""
    return (await delivery_page(settings, subscription_id, limit=limit)).attempts


async def delivery_page(
    settings: Settings,
    subscription_id: str,
    *,
    limit: int = 100,
    before: int | None = None,
    budget: int | None = None,
) -> DeliveryPage:
    """Up to `limit` of one subscription's attempts: the last ones before offset `before` (the
    `before` of an earlier page; None: the newest), oldest first. Reads only the partition
    the subscription's key goes to, backwards, at most `budget` records (default
    `limits.scan_max_records`): a page short of `limit` with a `before` ran out of budget."""
    budget = budget or settings.limits.scan_max_records
    topic = Topics(settings.kafka.topic_prefix).deliveries
    key = subscription_id.encode()
    parts = await partitions(settings.kafka, [topic])
    if not parts:
        return DeliveryPage([], None, 0)
    tp = TopicPartition(topic, KeyPartitioner()(key, [p.partition for p in parts], []))
    reader = make_consumer(settings, "audit")
    await reader.start()
    found: list[DeliveryAttempt] = []  # newest first
    scanned, next_before = 0, None
    try:
        begin = (await reader.beginning_offsets([tp]))[tp]
        end = (await reader.end_offsets([tp]))[tp]
        end = end if before is None else max(begin, min(end, before))
        chunks = backwards(reader, tp, begin=begin, end=end, chunk=min(_CHUNK, budget))
        async with contextlib.aclosing(chunks):
            async for low, records in chunks:
                scanned += len(records)
                next_before = low if low > begin else None
                for record in reversed(records):
                    attempt = _attempt(record.value)
                    if record.key != key or attempt is None:
                        continue
                    if attempt.subscription == subscription_id:
                        found.append(attempt)
                    if len(found) >= limit:
                        next_before = record.offset if record.offset > begin else None
                        break
                if len(found) >= limit or scanned >= budget:
                    break
    finally:
        await reader.stop()
    return DeliveryPage(found[::-1], next_before, scanned)


def _attempt(value: bytes | None) -> DeliveryAttempt | None:
    try:
        return decode_attempt(value or b"")
    except (ValueError, TypeError, KeyError):
        return None  # not ours to judge here; the log holds only attempts


async def person_deliveries(settings: Settings, bsn: str) -> list[PersonDelivery]:
    """Every delivery of data about the person with this BSN; ValueError for a bad BSN."""
    if not (values.is_nine_digits(bsn) and values.elfproef(bsn)):
        raise ValueError("not a BSN (9 digits, elfproef)")
    who = attributes.pseudonym(bsn, settings.security.pseudonym_key_bytes())
    attempts = await _scan(settings, lambda _k, a: a.pseudonym == who and a.outcome == "delivered")
    return [PersonDelivery.of(a) for a in attempts]
