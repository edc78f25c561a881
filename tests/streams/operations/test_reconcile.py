"""Reconciliation against a real broker: a subscriber that lost part of a window, its replay,
and a loss on the bus's side (dead-lettered, never delivered)."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streams.config import Settings
from streams.contract.attributes import OVERLEDEN, VERHUISD, ZAAK_GEMUTEERD
from streams.contract.rules import dutch_today
from streams.delivery.log import DeliveryAttempt, Outcome, encode_attempt
from streams.demo.generators import EventFactory
from streams.ingress.gate import Accepted, Gate
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics
from streams.operations.reconcile import digest, reconcile
from streams.operations.replay import Replayer
from streams.operations.replay_request import ReplayRequest
from streams.routing.router import delivery_record
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription, projection

pytestmark = pytest.mark.kafka

KEY = b"test-pseudonym-key"
TODAY = dutch_today()
DEADLINE_S = 60.0


class Bus:
    """Writes what the validator, router and dispatcher would: events, deliveries, the log."""

    def __init__(self, settings: Settings, topics: Topics) -> None:
        self.topics, self.gate = topics, Gate(topics, KEY)
        self.producer = make_producer(settings, "test-bus")

    async def send(self, items: list[tuple[str, bytes | None, Any, bytes]]) -> None:
        futures = [
            await self.producer.send(topic, value, key=key, headers=list(headers))
            for topic, key, headers, value in items
        ]
        await asyncio.gather(*futures)

    async def publish(self, n: int) -> list[Accepted]:
        accepted = [self.gate.accept(e, today=TODAY) for e in EventFactory(5, today=TODAY).mixed(n)]
        await self.send(
            [(a.topic, a.record.key, a.record.headers, a.record.value) for a in accepted]
        )
        return accepted

    async def route(self, sub: Subscription, accepted: list[Accepted]) -> None:
        records = [
            delivery_record(
                a.event.with_data(projection(sub, a.event.type)(a.event.data)), a.record.key
            )
            for a in accepted
        ]
        await self.send([(self.topics.deliver(sub.id), r.key, r.headers, r.value) for r in records])

    async def log(self, sub: Subscription, outcomes: list[tuple[str, Outcome]]) -> None:
        attempts = defaultdict(int)
        items = []
        for event_id, outcome in outcomes:
            attempts[event_id] += 1
            attempt = DeliveryAttempt(
                subscription=sub.id, event_id=event_id, source="urn:test", type=VERHUISD,
                outcome=outcome, attempt=attempts[event_id], at=datetime.now(UTC),
                purpose=sub.purpose,
            )  # fmt: skip
            key, value = encode_attempt(attempt)
            items.append((self.topics.deliveries, key, (), value))
        await self.send(items)


@pytest.fixture
async def bus(settings: Settings, bus_topics: Topics) -> AsyncIterator[Bus]:
    b = Bus(settings, bus_topics)
    await b.producer.start()
    yield b
    await b.producer.stop()


def gemeente_0363() -> Subscription:
    moves = {"any": [{"exact": {"gemeentevan": "0363"}}, {"exact": {"gemeentenaar": "0363"}}]}
    return Subscription.model_validate(
        {
            "id": "gemeente-0363", "sink": "x", "protocol": "KAFKA", "owner": "gemeente-0363",
            "types": [VERHUISD, OVERLEDEN], "purpose": "bijhouding",
            "filters": [{"any": [moves, {"exact": {"gemeente": "0363"}}]}],
            "fields": ["soort", "nieuwAdres.gemeentecode", "datumOverlijden"],
        }
    )  # fmt: skip


def matches_0363(a: Accepted) -> bool:
    return "0363" in a.event.extensions.values() and a.event.type != ZAAK_GEMUTEERD


async def test_a_subscriber_loss_shows_exactly_and_a_replay_repairs_it(
    settings: Settings, store: SubscriptionStore, bus: Bus, bus_topics: Topics, read_topic: Any,
) -> None:  # fmt: skip
    sub = await store.put(gemeente_0363())
    start = datetime.now(UTC) - timedelta(seconds=1)
    accepted = await bus.publish(2000)
    end = datetime.now(UTC) + timedelta(seconds=1)
    mine = [a for a in accepted if matches_0363(a)]
    assert len(mine) >= 20
    await bus.route(sub, mine)
    await bus.log(sub, [(a.event.id, "delivered") for a in mine])
    lost = {a.event.id for a in mine[3::5]}  # the subscriber's database lost these
    held = {a.event.id for a in mine} - lost

    result = await reconcile(settings, store, sub.id, start, end, held)
    assert result.published == result.delivered == {a.event.id for a in mine}
    assert result.delivered_not_held == sorted(lost)
    assert result.published_not_delivered == result.delivered_not_published == []
    body = json.loads(json.dumps(result.as_dict()))  # JSON-able
    assert body["published"]["digest"] == body["delivered"]["digest"] == digest(held | lost)
    assert body["held"] == {"count": len(held), "digest": digest(held)}
    assert body["missing"]["deliveredNotHeld"] == sorted(lost) and not body["consistent"]

    replayer = Replayer(settings, store)
    await replayer.start()
    try:
        status = await replayer.submit(sub.id, ReplayRequest(ids=tuple(lost)), actor="beheer")
        async with asyncio.timeout(DEADLINE_S):
            done = await replayer.wait(status.id)
    finally:
        await replayer.stop()
    assert (done.state, done.written) == ("done", len(lost))
    records = await read_topic(bus_topics.deliver(sub.id), count=len(mine) + len(lost))
    again = [json.loads(r.value) | {"key": r.key} for r in records[:]]
    again = [e for e in again if e.get("replay") == status.id]
    assert sorted(e["id"] for e in again) == sorted(lost)
    position = {a.event.id: i for i, a in enumerate(accepted)}
    per_key: dict[tuple[str, bytes], list[int]] = defaultdict(list)
    for e in again:
        per_key[(e["type"], e["key"])].append(position[e["id"]])
    assert all(seq == sorted(seq) for seq in per_key.values())

    # the dispatcher delivers the replayed events; the subscriber now holds everything
    await bus.log(sub, [(event_id, "delivered") for event_id in sorted(lost)])
    after = await reconcile(settings, store, sub.id, start, end, held | lost)
    assert after.consistent and after.as_dict()["missing"] == {
        "publishedNotDelivered": [], "deliveredNotPublished": [],
        "deliveredNotHeld": [], "publishedNotHeld": [],
    }  # fmt: skip
    # their audit records are written where an actor asks (the API, the CLI): see
    # tests/streams/http/test_audit_trail.py and tests/streams/cli/test_cli_audit.py


async def test_dead_lettered_events_show_as_published_not_delivered(
    settings: Settings, store: SubscriptionStore, bus: Bus,
) -> None:  # fmt: skip
    sub = await store.put(gemeente_0363())
    start = datetime.now(UTC) - timedelta(seconds=1)
    accepted = await bus.publish(1500)
    end = datetime.now(UTC) + timedelta(seconds=1)
    mine = [a.event.id for a in accepted if matches_0363(a)]
    purged, redriven = mine[:3], mine[3]
    outcomes: list[tuple[str, Outcome]] = []
    for event_id in mine:
        if event_id in purged or event_id == redriven:
            outcomes += [(event_id, "retry"), (event_id, "retry"), (event_id, "dead_lettered")]
        else:
            outcomes.append((event_id, "delivered"))
    outcomes += [(redriven, "redriven"), (redriven, "delivered")]
    await bus.log(sub, outcomes)

    result = await reconcile(settings, store, sub.id, start, end)
    assert result.published_not_delivered == sorted(purged)
    assert result.dead_lettered == set(purged)
    assert result.delivered_not_published == [] and result.delivered_not_held is None
    assert result.as_dict()["held"] is None and not result.consistent
