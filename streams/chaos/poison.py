"""Poison records: records the bus cannot read, into ingress and into a deliver topic.

Into every partition of ingress, amid a stream of valid events: a null header value, a
non-UTF-8 header value, a non-UTF-8 header name (which aiokafka alone cannot parse: it fails
the whole batch), a value over the bus's size limit, an event whose strings are control
characters, and truncated Avro. Into every partition of one subscription's deliver topic: a
null header value, a non-UTF-8 header value or name, a truncated JSON value, control
characters in the JSON, and an oversize value. After them in each partition a control: an
event a rule rejects (ingress) and a valid record (deliver), which show the path works when
the poison does not block it. Each must end in the invalid topic (ingress)
or the subscription's DLQ (deliver) with a `gemeentebus_error` reason, or be delivered
(a record the bus could still read); every valid record around them delivered.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Final

from streams.chaos.cluster import read_topic
from streams.chaos.core import ChaosContext, Outcome, Stage
from streams.chaos.kills import exits_check, load_for, standard_sinks
from streams.chaos.rawnames import RawName, send_raw_named
from streams.config import KafkaSettings
from streams.contract import codec
from streams.contract.envelope import CloudEvent
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.demo.invalid import invalid_corpus
from streams.exceptions import GemeentebusError
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics
from streams.routing.router import delivery_record

__all__ = ["poison_scenario"]

ERROR_HEADER: Final = "gemeentebus_error"
_FIND_S: Final = 30.0
_CONTROL: Final = "".join(chr(c) for c in range(1, 32) if chr(c) not in "\t\n\r")


@dataclass(frozen=True, slots=True)
class Poison:
    """One poison record: its kind, its unique key, and the event id it claims (if any)."""

    kind: str
    key: bytes
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    event_id: str | None


def _swap(
    headers: tuple[tuple[str, bytes], ...], name: str, value: bytes | None
) -> tuple[tuple[str, bytes | None], ...]:
    return tuple((k, value if k == name else v) for k, v in headers)


def _controls(event: CloudEvent, length: int) -> CloudEvent:
    filler = (_CONTROL * (length // len(_CONTROL) + 1))[:length]
    data = {**event.data, "identificatie": filler, "statusOmschrijving": filler}
    return CloudEvent(
        id=event.id, source=event.source, type=event.type, time=event.time,
        dataschema=event.dataschema, data=data, subject=event.subject,
        extensions=event.extensions,
    )  # fmt: skip


def _encodable_invalid(seed: int) -> CloudEvent:
    """An event that breaks a validation rule yet encodes to Avro (a rule, not the schema)."""
    for _, event in invalid_corpus(seed, today=dutch_today()):
        try:
            codec.to_kafka(event, key=None)
        except GemeentebusError:
            continue
        return event
    raise RuntimeError("the invalid corpus has no encodable event")


def ingress_poison(factory: EventFactory, partition: int) -> list[Poison]:
    """The ingress poison of one partition (see the module doc)."""
    out = []
    for kind in ("null header", "non-UTF-8 header", "non-UTF-8 header name", "oversize value",
                 "control characters", "truncated Avro",
                 "invalid event (control)"):  # fmt: skip
        event = factory.zaak_gemuteerd()
        if kind == "invalid event (control)":  # rejected by a rule: the invalid topic's path
            event = _encodable_invalid(partition)
        key = f"chaos-poison-{kind.replace(' ', '-')}-{partition}".encode()
        record = codec.to_kafka(event, key=key)
        value: bytes | None = record.value
        headers: tuple[tuple[str, bytes | None], ...] = tuple(record.headers)
        if kind == "null header":
            headers = _swap(record.headers, "ce_source", None)
        elif kind == "non-UTF-8 header":
            headers = _swap(record.headers, "ce_source", b"\xff\xfeurn:\xc3(")
        elif kind == "non-UTF-8 header name":
            headers = (*record.headers, (RawName(b"x-\xff\xfe"), b"1"))
        elif kind == "oversize value":
            value = os.urandom(200 * 1024)
        elif kind == "control characters":
            value = codec.to_kafka(_controls(event, 20_000), key=key).value
        elif kind == "truncated Avro":
            value = record.value[: len(record.value) // 2]
        out.append(Poison(f"ingress {kind}", key, value, headers, event.id))
    return out


def deliver_poison(factory: EventFactory, partition: int) -> list[Poison]:
    """The deliver-topic poison of one partition (see the module doc)."""
    out = []
    for kind in ("null header", "non-UTF-8 header", "non-UTF-8 header name", "truncated JSON",
                 "control characters", "oversize value",
                 "valid record (control)"):  # fmt: skip
        event = factory.zaak_gemuteerd()
        key = f"chaos-poison-{kind.replace(' ', '-')}-{partition}".encode()
        record = delivery_record(event, key)
        value: bytes | None = record.value
        headers: tuple[tuple[str, bytes | None], ...] = tuple(record.headers)
        if kind == "null header":
            headers = _swap(record.headers, "ce_id", None)
        elif kind == "non-UTF-8 header":
            headers = _swap(record.headers, "ce_id", b"\xff\xfe\xc3(")
        elif kind == "non-UTF-8 header name":
            headers = (*record.headers, (RawName(b"x-\xff\xfe"), b"1"))
        elif kind == "truncated JSON":
            value = record.value[: len(record.value) // 2]
        elif kind == "control characters":
            value = record.value.replace(b'"type"', b'"ty\x00\x01pe"', 1)
        elif kind == "oversize value":
            value = b'{"pad":"' + b"x" * (900 * 1024) + b'"}'
        out.append(Poison(f"deliver {kind}", key, value, headers, event.id))
    return out


async def _send(bootstrap: str, topic: str, partition: int, poison: list[Poison]) -> None:
    kafka = KafkaSettings(bootstrap_servers=bootstrap)  # the suite's own plaintext broker
    producer = make_producer(
        kafka, "chaos-poison", enable_idempotence=False, max_request_size=2 * 1024 * 1024
    )
    await producer.start()
    try:
        for p in poison:
            if any(isinstance(name, RawName) for name, _ in p.headers):
                await (await send_raw_named(producer, topic, partition, p.key, p.value,
                                            p.headers))  # fmt: skip
                continue
            await (await producer.send(topic, p.value, key=p.key, partition=partition,
                                       headers=list(p.headers)))  # fmt: skip
    finally:
        await producer.stop()


async def _reasons(bootstrap: str, topic: str) -> dict[bytes, str]:
    """The `gemeentebus_error` of every record in `topic` that has one, by each of the marks
    a poison record may be found by: its key (a DLQ keeps it), its `ce_id` (the invalid topic
    drops the key) and its value."""
    out = {}
    for record in await read_topic(bootstrap, topic):
        headers = dict(record.headers)
        error = headers.get(ERROR_HEADER)
        if error is None:
            continue
        reason = error.decode("utf-8", "replace")
        for mark in (record.key, headers.get("ce_id"), record.value):
            if mark:
                out[b"value:" + mark if mark is record.value else mark] = reason
    return out


async def poison_scenario(ctx: ChaosContext) -> Outcome:
    """Poison into ingress and into a deliver topic amid valid events (see the module doc)."""
    size, outcome = ctx.size, Outcome()
    broker = await ctx.broker()
    async with Stage(ctx, "poison", broker.bootstrap, standard_sinks(5)) as stage:
        topics = Topics(stage.prefix)
        target = stage.ids["gemeente-a"]
        n = size.load_events
        load = load_for(stage, n, size.rate, broker.bootstrap, seed=5)
        publishing = asyncio.create_task(load.run())
        factory = EventFactory(55, today=dutch_today())
        partitions = range(4)
        ingress = {p: ingress_poison(factory, p) for p in partitions}
        deliver = {p: deliver_poison(factory, p) for p in partitions}
        await asyncio.sleep(n / size.rate / 3)
        for p in partitions:
            await _send(broker.bootstrap, topics.ingress, p, ingress[p])
            await _send(broker.bootstrap, topics.deliver(target), p, deliver[p])
        outcome.faults.append(f"{stage.at()} {sum(map(len, ingress.values()))} poison records "
                              f"into ingress, {sum(map(len, deliver.values()))} into "
                              "deliver.gemeente-a")  # fmt: skip
        healed = time.time()
        await publishing
        await stage.settle()
        outcome.tallies = stage.tallies(healed_at=healed)
        sink = next(s for s in stage.sinks if s.name == "gemeente-a")
        began = time.monotonic()
        while True:
            invalid = await _reasons(broker.bootstrap, topics.invalid)
            dlq = await _reasons(broker.bootstrap, topics.dlq(target))
            pending = _judge(ingress, deliver, invalid, dlq, sink.ids(), report=None)
            if not pending or time.monotonic() - began > _FIND_S:
                break
            await asyncio.sleep(2.0)
        _judge(ingress, deliver, invalid, dlq, sink.ids(), report=outcome)
        exits_check(outcome, stage)
    return outcome


def _judge(
    ingress: dict[int, list[Poison]],
    deliver: dict[int, list[Poison]],
    invalid: dict[bytes, str],
    dlq: dict[bytes, str],
    delivered: set[str],
    *,
    report: Outcome | None,
) -> int:
    """How many poison records are not accounted for; with `report`, one check per kind."""
    kinds: dict[str, list[str]] = {}
    missing = 0
    for where, found in ((ingress, invalid), (deliver, dlq)):
        for poison in (p for batch in where.values() for p in batch):
            marks = (
                poison.key,
                (poison.event_id or "").encode(),
                b"value:" + (poison.value or b""),
            )
            reason = next((found[m] for m in marks if m in found), None)
            if reason is not None:
                fate = f"dead-lettered ({reason})"
            elif poison.event_id in delivered:
                fate = "delivered"
            else:
                fate = "missing"
                missing += 1
            kinds.setdefault(poison.kind, []).append(fate)
    if report is not None:
        for kind, fates in kinds.items():
            shown = ", ".join(f"{fates.count(f)}× {f}" for f in sorted(set(fates)))
            report.check(f"{kind}: dead-lettered with a reason, or delivered",
                         "missing" not in fates, shown)  # fmt: skip
    return missing
