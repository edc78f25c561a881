"""The codec scenario: `Gate.accept` vs bare fastavro encode, `from_kafka` vs bare decode."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from streams.bench.broker import BENCH_PSEUDONYM_KEY
from streams.bench.core import BenchContext, Figure
from streams.contract import codec
from streams.contract.envelope import CloudEvent
from streams.contract.record import KafkaRecord
from streams.contract.rules import dutch_today
from streams.contract.schemas import registry
from streams.demo.generators import EventFactory
from streams.ingress.gate import Gate
from streams.kafka.topics import Topics

__all__ = ["best_of", "codec_scenario"]


def best_of(repeats: int, *passes: Callable[[], object]) -> list[float]:
    """The best time of each pass over `repeats` rounds, passes interleaved within a round."""
    best = [float("inf")] * len(passes)
    for _ in range(repeats):
        for i, work in enumerate(passes):
            started = time.perf_counter()
            work()
            best[i] = min(best[i], time.perf_counter() - started)
    return best


def _events_of(event_type: str, count: int, today: date) -> list[CloudEvent]:
    factory = EventFactory(len(event_type), today=today)
    make = {
        "nl.brp.persoon-verhuisd": factory.verhuisd,
        "nl.brp.persoon-overleden": factory.overleden,
        "nl.overheid.zaken.zaak-gemuteerd": factory.zaak_gemuteerd,
    }[event_type]
    factory.population = max(factory.population, count // 4)
    return [make() for _ in range(count)]


async def codec_scenario(ctx: BenchContext) -> list[Figure]:
    """Per event type: `Gate.accept` vs bare `schemaless_writer`, `from_kafka` vs bare reader."""
    today = dutch_today()
    gate = Gate(Topics("bench"), BENCH_PSEUDONYM_KEY.encode())
    figures = []
    for event_type in registry().types():
        events = _events_of(event_type, ctx.size.events_per_type, today)
        schema = registry().current(event_type).schema
        datas = [e.data for e in events]
        records = [gate.accept(e, today=today).record for e in events]
        values = [r.value for r in records]

        def full_encode(events: list[CloudEvent] = events) -> None:
            for event in events:
                gate.accept(event, today=today)

        def bare_encode(datas: list[Mapping[str, Any]] = datas, schema: Any = schema) -> None:
            for data in datas:
                out = io.BytesIO()
                schemaless_writer(out, schema, data)
                out.getvalue()

        def full_decode(records: list[KafkaRecord] = records) -> None:
            for record in records:
                codec.from_kafka(record)

        def bare_decode(values: list[bytes] = values, schema: Any = schema) -> None:
            for value in values:
                schemaless_reader(io.BytesIO(value), schema, None)

        enc, bare_enc, dec, bare_dec = best_of(
            ctx.size.repeats, full_encode, bare_encode, full_decode, bare_decode
        )
        n = len(events)
        for label, full, bare in (
            ("validate+encode vs bare encode", enc, bare_enc),
            ("decode vs bare decode", dec, bare_dec),
        ):
            figures.append(
                Figure.of(
                    f"{label}: {event_type}",
                    value=n / full,
                    baseline=n / bare,
                    unit="events/s",
                    target=0.5,
                )
            )
        await asyncio.sleep(0)
    return figures
