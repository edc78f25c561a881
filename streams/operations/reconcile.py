"""Reconciliation: what the bus published for a subscription against what it delivered (and,
when the subscriber says what it holds, against that too), for one window.

- published: the events accepted in [start, end) (record time in the events topics) that the
  subscription matches. A changed subscription is compared against its *current* definition
  (filters, volgindicaties): an event delivered under an older definition that no longer
  matches shows as delivered-but-not-published.
- delivered: events of that window with a `delivered` attempt in the delivery log. An event
  whose attempts ended `dead_lettered`, with no `delivered` after a redrive, is not delivered:
  "dead-lettered and purged" shows as published-but-not-delivered (and in `deadLettered`).
- held: the subscriber's own list of event ids, if it sent one.

Each side gets a count and an order-independent digest: SHA-256 over its sorted ids, one per
line; equal digests mean equal sets. The HTTP API and the CLI record each
reconciliation in the audit trail (`streams.operations.audit`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import TopicPartition

from streams.config import Settings
from streams.contract.headers import header_text
from streams.delivery.log import decode_attempt
from streams.kafka.topics import Topics, partitions
from streams.kafka.window import consumer, merged, offsets_at
from streams.routing.matching import Matcher
from streams.routing.store import SubscriptionStore

__all__ = ["Reconciliation", "digest", "reconcile"]


def digest(ids: Iterable[str]) -> str:
    """SHA-256 (hex) over the sorted, distinct ids, one per line: the same set, the same digest."""
    sha = hashlib.sha256()
    for event_id in sorted(set(ids)):
        sha.update(event_id.encode("utf-8") + b"\n")
    return sha.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconciliation:
    """The outcome of one reconciliation; `as_dict()` is its JSON."""

    subscription: str
    start: datetime
    end: datetime
    published: frozenset[str]
    delivered: frozenset[str]
    dead_lettered: frozenset[str]  # dead-lettered and never delivered
    held: frozenset[str] | None = None

    @property
    def published_not_delivered(self) -> list[str]:
        return sorted(self.published - self.delivered)

    @property
    def delivered_not_published(self) -> list[str]:
        return sorted(self.delivered - self.published)

    @property
    def delivered_not_held(self) -> list[str] | None:
        return None if self.held is None else sorted(self.delivered - self.held)

    @property
    def published_not_held(self) -> list[str] | None:
        return None if self.held is None else sorted(self.published - self.held)

    @property
    def consistent(self) -> bool:
        """Nothing missing on any side."""
        return not (
            self.published_not_delivered
            or self.delivered_not_published
            or self.delivered_not_held
            or self.published_not_held
        )

    def as_dict(self) -> dict[str, Any]:
        sides: dict[str, frozenset[str] | None] = {
            "published": self.published,
            "delivered": self.delivered,
            "held": self.held,
        }
        return {
            "subscription": self.subscription,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "consistent": self.consistent,
            **{
                name: None if ids is None else {"count": len(ids), "digest": digest(ids)}
                for name, ids in sides.items()
            },
            "missing": {
                "publishedNotDelivered": self.published_not_delivered,
                "deliveredNotPublished": self.delivered_not_published,
                "deliveredNotHeld": self.delivered_not_held,
                "publishedNotHeld": self.published_not_held,
            },
            "deadLettered": sorted(self.dead_lettered),
        }


async def reconcile(
    settings: Settings,
    store: SubscriptionStore,
    sub_id: str,
    start: datetime,
    end: datetime,
    held_ids: set[str] | None = None,
) -> Reconciliation:
    """Reconcile one subscription over [start, end); `LookupError` for an unknown one."""
    subscription = store.get(sub_id)
    if subscription is None:
        raise LookupError(f"no subscription {sub_id}")
    topics = Topics(settings.kafka.topic_prefix)
    # published for this subscription: a followed person's events only once followed
    since = store.followed_since(sub_id)
    matcher = Matcher(subscription, settings.security.pseudonym_key_bytes(), followed_since=since)
    delivered, dead, types = await _delivery_log(settings, topics, sub_id, start)
    in_window: set[str] = set()  # every event accepted in the window, matching or not
    published: set[str] = set()
    reader = consumer(settings)
    await reader.start()
    try:
        wanted = {topics.events(t) for t in (*subscription.types, *types)}
        tps = await partitions(settings.kafka, wanted)
        starts, ends = await offsets_at(reader, tps, start), await offsets_at(reader, tps, end)
        async for record in merged(reader, starts, ends):
            event = matcher.match(record)
            event_id = header_text(record.headers, "ce_id")
            if event_id is not None:
                in_window.add(event_id)
            if event is not None:
                published.add(event.id)
    finally:
        await reader.stop()
    # the delivery log is read from `start` on, so keep what belongs to this window's events
    result = Reconciliation(
        subscription=sub_id,
        start=start,
        end=end,
        published=frozenset(published),
        delivered=frozenset(delivered & in_window),
        dead_lettered=frozenset((dead - delivered) & in_window),
        held=None if held_ids is None else frozenset(held_ids),
    )
    return result


async def _delivery_log(
    settings: Settings, topics: Topics, sub_id: str, start: datetime
) -> tuple[set[str], set[str], set[str]]:
    """Ids delivered and ids dead-lettered for a subscription, from `start` to now; and the
    event types they were of."""
    delivered: set[str] = set()
    dead: set[str] = set()
    types: set[str] = set()
    reader = consumer(settings)
    await reader.start()
    try:
        tps: list[TopicPartition] = await partitions(settings.kafka, [topics.deliveries])
        starts, ends = await offsets_at(reader, tps, start), await offsets_at(reader, tps, None)
        async for record in merged(reader, starts, ends):
            if bytes(record.key or b"").decode("utf-8", "replace") != sub_id or not record.value:
                continue
            try:
                attempt = decode_attempt(record.value)
            except (ValueError, TypeError):
                continue
            if attempt.subscription != sub_id:
                continue
            types.add(attempt.type)
            if attempt.outcome == "delivered":
                delivered.add(attempt.event_id)
            elif attempt.outcome == "dead_lettered":
                dead.add(attempt.event_id)
    finally:
        await reader.stop()
    return delivered, dead, types
