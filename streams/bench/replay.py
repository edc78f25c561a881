"""The replay scenario: a `Replayer` into a KAFKA subscription vs a raw read of the same topics.

The events topics are filled as the validator fills them (Gate output, keyed by person).
The raw baseline reads every partition of those topics from the start with one aiokafka
consumer and does nothing else; the replay reads the same records, matches, projects,
encodes and writes them to the subscription's deliver topic (acks=all), with a rate limit
far above what the machine can do.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Final

from streams.bench.broker import BENCH_OWNER, delete_topics, namespace, raw_read_seconds
from streams.bench.core import BenchContext, Figure
from streams.config import Settings
from streams.contract.rules import dutch_today
from streams.contract.schemas import registry
from streams.demo.generators import EventFactory
from streams.ingress.gate import Gate
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics, bus_topics, create_topics
from streams.operations.replay import Replayer
from streams.operations.replay_request import ReplayRequest
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

__all__ = ["fill_events_topics", "replay_scenario"]

_CHUNK: Final = 5_000
_UNLIMITED: Final = 1e9  # events/s: the rate limit never holds a replay back


async def fill_events_topics(settings: Settings, n: int) -> None:
    """`n` mixed events into their events topics, as the validator writes them."""
    today = dutch_today()
    gate = Gate(Topics(settings.kafka.topic_prefix), settings.security.pseudonym_key_bytes())
    factory = EventFactory(11, today=today)
    producer = make_producer(settings, "bench-events")
    await producer.start()
    try:
        for start in range(0, n, _CHUNK):
            accepted = [gate.accept(e, today=today) for e in factory.mixed(min(_CHUNK, n - start))]
            futures = [
                await producer.send(a.topic, a.record.value, key=a.record.key,
                                    headers=list(a.record.headers))
                for a in accepted
            ]  # fmt: skip
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def replay_scenario(ctx: BenchContext) -> list[Figure]:
    """Replay throughput into a KAFKA subscription vs a raw read of the same events."""
    assert ctx.bootstrap is not None
    n = ctx.size.replay_events
    settings = namespace(ctx.settings, ctx.bootstrap, "replay", uuid.uuid4().hex[:8])
    specs = bus_topics(settings.kafka, registry().types())
    store = SubscriptionStore(settings, name="bench-replay-store")
    try:
        await create_topics(settings.kafka, specs)
        since = datetime.now(UTC) - timedelta(seconds=5)
        await fill_events_topics(settings, n)
        topics = Topics(settings.kafka.topic_prefix)
        events = [topics.events(t) for t in registry().types()]
        raw_s = await raw_read_seconds(settings, events, n)
        await store.start()
        await store.ready()
        subscription = Subscription.model_validate(
            {"id": "bench-replay", "sink": "bench-replay", "protocol": "KAFKA",
             "types": list(registry().types()), "owner": BENCH_OWNER, "purpose": "bench"}
        )  # fmt: skip
        await store.put(subscription)
        replayer = Replayer(settings, store, rate=_UNLIMITED)
        await replayer.start()
        try:
            request = ReplayRequest.model_validate({"from": since.isoformat()})
            started = time.perf_counter()
            status = await replayer.submit(subscription.id, request, actor="bench")
            async with asyncio.timeout(120.0 + n / 200):
                done = await replayer.wait(status.id)
            replay_s = time.perf_counter() - started
        finally:
            await replayer.stop()
    finally:
        await store.stop()
        await delete_topics(settings, [s.name for s in specs])
    if done.state != "done" or done.written != n:
        raise RuntimeError(f"replay ended {done.state}, {done.written} of {n}: {done.error}")
    ctx.progress(f"  replay: {n} events in {replay_s:.1f} s, raw read {raw_s:.1f} s")
    return [
        Figure.of(
            "replay into a KAFKA subscription vs raw aiokafka read of the events topics",
            value=n / replay_s,
            baseline=n / raw_s,
            unit="events/s",
            target=0.25,  # issue 16
        )
    ]
