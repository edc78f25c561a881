"""The validator scenario: the Faust `Validator` vs a raw aiokafka passthrough (issue 4)."""

from __future__ import annotations

import asyncio
import time
import uuid

from streams.bench.broker import (
    AIOKAFKA_WAIT_MS,
    Clock,
    delete_topics,
    namespace,
    partitions,
    publish,
    watch,
)
from streams.bench.codec import best_of
from streams.bench.core import BenchContext, Figure
from streams.config import Settings
from streams.contract import codec
from streams.contract.attributes import partition_key
from streams.contract.rules import dutch_today
from streams.contract.schemas import registry
from streams.demo.generators import EventFactory
from streams.ingress.gate import Gate
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.topics import Topics, TopicSpec, bus_topics, create_topics
from streams.routing.worker import BATCH_SIZE, Validator

_GATE_SAMPLE = 5_000

__all__ = ["validator_scenario"]


async def _passthrough(settings: Settings, source: str, target: str, n: int) -> tuple[float, float]:
    """A validator without validation: consume, produce unchanged (acks=all), commit.

    Returns the time of the first consume and of the last delivery.
    """
    consumer = make_consumer(
        settings,
        "bench-passthrough",
        source,
        group=f"{settings.kafka.topic_prefix}.passthrough",
        fetch_max_wait_ms=AIOKAFKA_WAIT_MS,
    )
    producer = make_producer(settings, "bench-passthrough")
    await producer.start()
    await consumer.start()
    first, moved, committed = 0.0, 0, time.perf_counter()
    try:
        while moved < n:
            batches = await consumer.getmany(timeout_ms=50, max_records=BATCH_SIZE)
            records = [r for part in batches.values() for r in part]
            if not records:
                continue
            first = first or time.perf_counter()
            futures = [
                await producer.send(target, r.value, key=r.key, headers=list(r.headers))
                for r in records
            ]
            await asyncio.gather(*futures)
            moved += len(records)
            if time.perf_counter() - committed >= 1.0:  # like Faust's commit interval
                await consumer.commit()
                committed = time.perf_counter()
        last = time.perf_counter()
        await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
    return first, last


def gate_seconds_per_record(settings: Settings, repeats: int) -> float:
    """What judging one ingress record costs in this process, Kafka aside: decode, check
    and re-encode (`Gate.from_record`), best of `repeats` passes over mixed records."""
    gate = Gate(Topics(settings.kafka.topic_prefix), settings.security.pseudonym_key_bytes())
    records = [
        codec.to_kafka(e, key=partition_key(e.type, e.data, b"bench"))
        for e in EventFactory(4, today=dutch_today()).mixed(_GATE_SAMPLE)
    ]

    def judge_all() -> None:
        for record in records:
            gate.from_record(record)

    (best,) = best_of(repeats, judge_all)
    return best / len(records)


async def validator_scenario(ctx: BenchContext) -> list[Figure]:
    """The Faust `Validator` vs a raw aiokafka passthrough over the same ingress records."""
    assert ctx.bootstrap is not None
    n, token = ctx.size.kafka_records, uuid.uuid4().hex[:8]
    raw = namespace(ctx.settings, ctx.bootstrap, "raw", token)
    val = namespace(ctx.settings, ctx.bootstrap, "val", token)
    raw_topics, val_topics = Topics(raw.kafka.topic_prefix), Topics(val.kafka.topic_prefix)
    parts = raw.kafka.partitions
    raw_specs = [TopicSpec(raw_topics.ingress, parts), TopicSpec(raw_topics.events("raw"), parts)]
    val_specs = bus_topics(val.kafka, registry().types())
    deadline_s = 120.0 + n / 500
    try:
        await create_topics(raw.kafka, raw_specs)
        await create_topics(val.kafka, val_specs)
        await publish(raw, [raw_topics.ingress, val_topics.ingress], n)

        # (a) the raw passthrough, watched from outside like the validator
        raw_clock, raw_out = Clock(time.perf_counter()), raw_topics.events("raw")
        async with asyncio.timeout(deadline_s), asyncio.TaskGroup() as group:
            group.create_task(watch(raw, partitions([raw_out], parts), n, raw_clock))
            passthrough = group.create_task(_passthrough(raw, raw_topics.ingress, raw_out, n))
        first, last = passthrough.result()

        # (b) the real validator, on a copy of the same records
        validator = Validator(val)
        val_clock = Clock(time.perf_counter())
        events_topics = partitions([val_topics.events(t) for t in registry().types()], parts)
        await validator.start()
        try:
            async with asyncio.timeout(deadline_s):
                await watch(val, events_topics, n, val_clock)
        finally:
            await validator.stop()
    finally:
        await delete_topics(raw, [s.name for s in raw_specs])
        await delete_topics(val, [s.name for s in val_specs])

    assert val_clock.done is not None and raw_clock.done is not None
    assert val_clock.first is not None and raw_clock.first is not None
    as_specified = Figure.of(
        "validator vs raw passthrough (validator from start, raw from first consume)",
        value=n / (val_clock.done - val_clock.started),
        baseline=n / (last - first),
        unit="records/s",
        target=0.4,  # issue 16
    )

    figures = [as_specified]
    # Steady state needs outputs to watch arrive: not there when one poll saw most of them.
    if max(raw_clock.first_count, val_clock.first_count) <= n // 2:
        figures.append(
            Figure.of(
                "validator vs raw passthrough, steady state (first output to last)",
                value=(n - val_clock.first_count) / (val_clock.done - val_clock.first),
                baseline=(n - raw_clock.first_count) / (raw_clock.done - raw_clock.first),
                unit="records/s",
                target=0.4,  # issue 16
            )
        )
    # The best any validator could do in one Python process: the raw copy plus the gate's
    # own work per record, and nothing else (no framework, no routing).
    gate_s = gate_seconds_per_record(val, ctx.size.repeats)
    raw_s = (last - first) / n
    figures.append(
        Figure.of(
            "validator ceiling: raw passthrough + Gate.from_record per record, vs raw",
            value=1 / (raw_s + gate_s),
            baseline=1 / raw_s,
            unit="records/s",
            target=None,
        )
    )
    ctx.progress(
        f"  gate {gate_s * 1e6:.0f} µs/record, raw copy {raw_s * 1e6:.0f} µs/record; "
        f"start to first output: validator {val_clock.first - val_clock.started:.2f} s, "
        f"raw passthrough {raw_clock.first - raw_clock.started:.2f} s"
    )
    return figures
