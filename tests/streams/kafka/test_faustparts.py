"""The Faust parts of the worker's app: Faust's guarantees with less work per message."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict

import pytest

from streams.config import Settings
from streams.contract import codec
from streams.contract.attributes import partition_key
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.kafka import faustparts
from streams.kafka.clients import make_app, make_producer
from streams.kafka.topics import Topics
from streams.routing.worker import Validator


def test_the_app_uses_the_lean_parts(settings: Settings) -> None:
    app = make_app(settings, "parts")
    assert isinstance(app.tables, faustparts.Tableless)
    assert isinstance(app.monitor, faustparts.LeanMonitor)
    assert app.transport.Consumer is faustparts.Consumer  # made at start: no thread here


def _ce_id(record: object) -> str:
    return next(bytes(v).decode() for k, v in record.headers if k == "ce_id")  # type: ignore[attr-defined]


@pytest.mark.kafka
async def test_a_second_worker_joining_mid_stream_loses_nothing_and_keeps_key_order(
    settings: Settings, bus_topics: Topics, read_topic
) -> None:
    # The rebalance stops the first worker's flow while a fetch is being handed over: what
    # was not handed over is fetched again from the committed offsets, by whoever owns it.
    events = EventFactory(11, today=dutch_today()).mixed(6000)
    records = [codec.to_kafka(e, key=partition_key(e.type, e.data, b"pub")) for e in events]
    producer = make_producer(settings, "publisher")
    await producer.start()
    try:
        futures = [
            await producer.send(bus_topics.ingress, r.value, key=r.key, headers=list(r.headers))
            for r in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()

    first, second = Validator(settings), Validator(settings)
    await first.start()
    try:
        async with asyncio.timeout(60):  # the first worker has judged a record
            while first.processed == 0:  # noqa: ASYNC110 - polls the worker's count
                await asyncio.sleep(0.01)
        await second.start()  # joins the group: a rebalance mid-stream
        try:
            wanted = {e.id for e in events}
            by_type = Counter(e.type for e in events)
            deadline = time.monotonic() + 90
            while True:
                arrived = {
                    t: await read_topic(bus_topics.events(t), count=n, within=60)
                    for t, n in by_type.items()
                }
                seen = {_ce_id(r) for rs in arrived.values() for r in rs}
                if seen >= wanted or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        finally:
            await second.stop()
    finally:
        await first.stop()

    assert seen == wanted, "events lost in the rebalance"
    assert first.failure is None and second.failure is None
    # Per key in each events topic, each event's first arrival keeps publication order
    # (a redelivered stretch repeats what came before; it never reorders).
    position = {e.id: i for i, e in enumerate(events)}
    per_key: dict[tuple[str, bytes], list[int]] = defaultdict(list)
    for rs in arrived.values():
        for r in sorted(rs, key=lambda r: (r.partition, r.offset)):
            order = per_key[(r.topic, r.key)]
            if position[_ce_id(r)] not in order:
                order.append(position[_ce_id(r)])
    assert all(seq == sorted(seq) for seq in per_key.values())
