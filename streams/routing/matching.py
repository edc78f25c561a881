"""Matching: which subscriptions receive an event, at a cost that follows the candidates.

`SubscriptionIndex` indexes active subscriptions by event type, then by the (attribute, value)
pairs their compiled filters pin (`Filter.pins`: every match carries one of them). An event
looks up its own attribute values, so a thousand subscriptions for other gemeenten cost
nothing; subscriptions without pins are checked with their compiled predicate. Volgindicaties
add a followed person's events regardless of its own filters (SPEC §4), never past the
filters its owner's grant requires (`Subscription.filter_for`, `required_for`). A `Matcher`
applies one subscription's *current* filters, volgindicaties and fields to records read back
from an events topic (replays, reconciliation).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Final

from aiokafka.structs import ConsumerRecord

from streams.contract import attributes, codec
from streams.contract.codec import format_time
from streams.contract.envelope import CloudEvent
from streams.contract.record import Unreadable, read_record
from streams.contract.rules import dutch_today
from streams.exceptions import InvalidEvent
from streams.routing.filters import Pin
from streams.routing.subscriptions import Subscription, projection

__all__ = ["Matcher", "SubscriptionIndex", "event_attributes"]

# An events-topic record was under the size limit when it was accepted: read it whole.
_ANY_SIZE: Final = 1 << 62


def event_attributes(event: CloudEvent) -> dict[str, str]:
    """The attributes filters see: extension attributes plus the context attributes present."""
    attributes = dict(event.extensions)
    attributes.update(
        id=event.id,
        source=event.source,
        type=event.type,
        time=format_time(event.time),  # as on the wire, so a `prefix` on time means the same
        dataschema=event.dataschema,
        specversion=event.specversion,
    )
    if event.subject is not None:
        attributes["subject"] = event.subject
    if event.sequence is not None:
        attributes["sequence"] = event.sequence
    return attributes


@dataclass(slots=True)
class _TypeIndex:
    """The subscriptions of one event type."""

    # attribute -> value -> subscription id -> subscription
    pinned: dict[str, dict[str, dict[str, Subscription]]] = field(default_factory=dict)
    unpinned: dict[str, Subscription] = field(default_factory=dict)


class SubscriptionIndex:
    """The active subscriptions, indexed for matching; change it with `upsert` and `remove`.

    Not thread-safe: one stream worker owns it. `predicates_evaluated` counts filter
    evaluations (for metrics and for tests that the cost does not grow with unrelated
    subscriptions).
    """

    def __init__(self, subscriptions: Iterable[Subscription] = ()) -> None:
        self._subscriptions: dict[str, Subscription] = {}
        self._by_type: dict[str, _TypeIndex] = {}
        self._pins: dict[str, dict[str, frozenset[Pin] | None]] = {}  # id -> type -> pins
        self._followers: dict[str, dict[str, Subscription]] = {}
        self.predicates_evaluated = 0
        for subscription in subscriptions:
            self.upsert(subscription)

    def __len__(self) -> int:
        return len(self._subscriptions)

    def __contains__(self, subscription_id: object) -> bool:
        return subscription_id in self._subscriptions

    def __iter__(self) -> Iterator[Subscription]:
        return iter(self._subscriptions.values())

    def get(self, subscription_id: str) -> Subscription | None:
        """The active subscription with this id, if any."""
        return self._subscriptions.get(subscription_id)

    def upsert(self, subscription: Subscription) -> None:
        """Add or replace a subscription; a retired one is dropped from the index."""
        self.remove(subscription.id)
        if not subscription.active:
            return
        self._subscriptions[subscription.id] = subscription
        for pseudonym in subscription.volgindicaties:
            self._followers.setdefault(pseudonym, {})[subscription.id] = subscription
        if subscription.volgindicaties_only:
            return
        by_type = self._pins[subscription.id] = {}
        for event_type in subscription.types:
            pins = by_type[event_type] = _pins(subscription, event_type)
            bucket = self._by_type.setdefault(event_type, _TypeIndex())
            if pins is None:
                bucket.unpinned[subscription.id] = subscription
                continue
            for name, value in pins:
                by_value = bucket.pinned.setdefault(name, {})
                by_value.setdefault(value, {})[subscription.id] = subscription

    def follow(self, subscription_id: str, pseudonym: str, *, following: bool) -> None:
        """Record that an indexed subscription now follows a person (or no longer does),
        its `volgindicaties` already changed in place; unknown ids are ignored."""
        subscription = self._subscriptions.get(subscription_id)
        if subscription is None:
            return
        if following:
            self._followers.setdefault(pseudonym, {})[subscription_id] = subscription
            return
        followers = self._followers.get(pseudonym, {})
        followers.pop(subscription_id, None)
        if not followers:
            self._followers.pop(pseudonym, None)

    def remove(self, subscription_id: str) -> None:
        """Forget a subscription; unknown ids are ignored."""
        subscription = self._subscriptions.pop(subscription_id, None)
        if subscription is None:
            return
        for pseudonym in subscription.volgindicaties:
            followers = self._followers.get(pseudonym, {})
            followers.pop(subscription_id, None)
            if not followers:
                self._followers.pop(pseudonym, None)
        if subscription.volgindicaties_only:
            return
        by_type = self._pins.pop(subscription_id)
        for event_type in subscription.types:
            bucket = self._by_type.get(event_type)
            if bucket is None:
                continue
            bucket.unpinned.pop(subscription_id, None)
            for name, value in by_type[event_type] or ():
                by_value = bucket.pinned[name]
                by_value[value].pop(subscription_id, None)
                if not by_value[value]:
                    del by_value[value]
                if not by_value:
                    del bucket.pinned[name]
            if not bucket.pinned and not bucket.unpinned:
                del self._by_type[event_type]

    def match(self, event: CloudEvent, pseudonym: str | None, today: date) -> list[Subscription]:
        """The subscriptions that receive `event`, ordered by id.

        `pseudonym` is the pseudonym of the event's person (None for events about no person);
        `today` decides which volgindicaties are still active (einddatum absent or >= today).
        """
        found: dict[str, Subscription] = {}
        bucket = self._by_type.get(event.type)
        attributes: dict[str, str] | None = None
        if bucket is not None:
            attributes = event_attributes(event)
            candidates = dict(bucket.unpinned)
            for name, by_value in bucket.pinned.items():
                value = attributes.get(name)
                if value is not None and value in by_value:
                    candidates.update(by_value[value])
            for subscription in candidates.values():
                if subscription.source is not None and subscription.source != event.source:
                    continue
                self.predicates_evaluated += 1
                if subscription.filter_for(event.type)(attributes):
                    found[subscription.id] = subscription
        if pseudonym is not None:
            for subscription in self._followers.get(pseudonym, {}).values():
                if subscription.id in found or event.type not in subscription.types:
                    continue
                if subscription.source is not None and subscription.source != event.source:
                    continue
                if not subscription.volgindicatie_active(pseudonym, today):
                    continue
                # the grant's required filter binds a followed person's events as well
                required = subscription.required_for(event.type)
                if required is not None:
                    attributes = attributes or event_attributes(event)
                    if not required(attributes):
                        continue
                found[subscription.id] = subscription
        return [found[key] for key in sorted(found)]


def _pins(subscription: Subscription, event_type: str) -> frozenset[Pin] | None:
    """The (attribute, value) pairs to index a subscription under for one type (its filters
    and its grant's); None: check it always."""
    pins = subscription.filter_for(event_type).pins
    if pins is None and subscription.source is not None:
        return frozenset({("source", subscription.source)})  # `source` is an exact match too
    return pins


class Matcher:
    """The subscription's current definition applied to events read from an events topic."""

    def __init__(
        self,
        subscription: Subscription,
        key: bytes,
        *,
        followed_since: Mapping[str, int] | None = None,
    ) -> None:
        """`followed_since`: per followed pseudonym, since when (epoch ms) the subscription
        follows that person (`SubscriptionStore.followed_since`); an event recorded before
        then matches only by the filters, never by the volgindicatie alone (None: any time)."""
        self.subscription, self._key = subscription, key
        self._index = SubscriptionIndex([subscription])
        self._today: date = dutch_today()
        self._since = followed_since

    def _before_followed(self, record: ConsumerRecord[bytes, bytes], person: str | None) -> bool:
        if self._since is None or person is None or person not in self.subscription.volgindicaties:
            return False
        since = self._since.get(person)
        return since is None or record.timestamp < since

    def match(self, record: ConsumerRecord[bytes, bytes]) -> CloudEvent | None:
        """The event, projected, if the subscription receives it (unreadable or undecodable:
        None; never raises)."""
        read = read_record(record.key, record.headers, record.value, max_bytes=_ANY_SIZE)
        if isinstance(read, Unreadable):
            return None
        try:
            event = codec.from_kafka(read)
        except InvalidEvent:
            return None
        person = None
        if event.type in attributes.PERSON_TYPES:
            person = attributes.pseudonym(str(event.data["bsn"]), self._key)
        if not self._index.match(event, person, self._today):
            return None
        if self._before_followed(record, person) and not self._index.match(
            event, None, self._today
        ):
            return None  # the volgindicatie is younger: this past is not the subscriber's
        return event.with_data(projection(self.subscription, event.type)(event.data))
