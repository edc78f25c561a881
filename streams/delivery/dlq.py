"""Dead letters: what could not be delivered within the retry window, and bringing it back.

`gemeentebus.deliver.<id>.dlq` holds the deliver-topic record unchanged (key, value, headers)
plus `gemeentebus_error` (the last error's stable code: `http_500`, `timeout`, `connect`, …),
`gemeentebus_error_detail` (human text, no personal data) and `gemeentebus_attempts`.
A record the courier could not read at all (a null header value, bytes that are no event) is
kept byte for byte, null header values included, with the reason as its error (attempts 0).
A dead letter the DLQ topic refuses as too large is written without its value instead, with
`gemeentebus_truncated` (what was left out) and `gemeentebus_origin` (`<topic>/<partition>/
<offset>` of the original in the deliver topic, where it stays for the topic's retention).

`redrive` appends the dead letters, in order, to the subscription's deliver topic again
(error headers dropped, `gemeentebus_redriven: 1` added), so the dispatcher delivers them
like any other event. Its consumer group `<prefix>.dlq-redrive.<id>` commits what it
redrove, so a second redrive only takes letters that arrived since.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams.config import Settings
from streams.contract.headers import (
    ATTEMPTS_HEADER,
    DETAIL_HEADER,
    ERROR_HEADER,
    ORIGIN_HEADER,
    REDRIVEN_HEADER,
    TRUNCATED_HEADER,
    RawHeaders,
    raw_headers,
)
from streams.delivery.log import delivery_attempt, event_ref, log_attempt
from streams.exceptions import KafkaUnavailable
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.topics import Groups, Topics, partitions
from streams.routing.store import SubscriptionStore

__all__ = [
    "DeadLetter",
    "Headers",
    "dead_letter_headers",
    "list_dead_letters",
    "redrive",
    "truncated_headers",
]

log = logging.getLogger(__name__)

_DLQ_HEADERS: Final = frozenset({ERROR_HEADER, DETAIL_HEADER, ATTEMPTS_HEADER})
_KEPT_HEADER_BYTES: Final = 1024  # a truncated dead letter keeps only headers up to this size

Headers = tuple[tuple[str, bytes], ...]
Progress = Callable[[int, int], None]  # (redriven so far, total)

_POLL_MS = 200
_BATCH = 500


def dead_letter_headers(
    headers: RawHeaders, *, error: str, detail: str, attempts: int
) -> RawHeaders:
    """The headers of a dead letter: the original ones (a null value stays null) plus why and
    after how many attempts."""
    kept = tuple((k, v) for k, v in headers if k not in _DLQ_HEADERS)
    return (
        *kept,
        (ERROR_HEADER, error.encode()),
        (DETAIL_HEADER, detail.encode()),
        (ATTEMPTS_HEADER, str(attempts).encode()),
    )


def truncated_headers(headers: RawHeaders, *, value_bytes: int, origin: str) -> RawHeaders:
    """The headers of a dead letter written without its value (the DLQ refused it as too
    large): the error headers, the original headers up to 1 KiB each, what was left out and
    where the original is."""
    kept = [(k, v) for k, v in headers if v is None or len(v) <= _KEPT_HEADER_BYTES]
    dropped = len(headers) - len(kept)
    note = f"value of {value_bytes} bytes left out; {dropped} large headers left out"
    return (*kept, (TRUNCATED_HEADER, note.encode()), (ORIGIN_HEADER, origin.encode()))


def _redriven_headers(headers: RawHeaders) -> RawHeaders:
    kept = tuple((k, v) for k, v in headers if k not in _DLQ_HEADERS and k != REDRIVEN_HEADER)
    return (*kept, (REDRIVEN_HEADER, b"1"))


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """One dead letter as an operator sees it: no data contents."""

    event_id: str
    source: str
    type: str
    time: datetime | None
    error: str
    detail: str
    attempts: int
    partition: int
    offset: int
    redriven: bool  # a redrive already took it


def _attempts(raw: bytes | None) -> int:
    return int(raw) if raw is not None and raw.isdigit() else 0


def _consumer(settings: Settings, group: str | None) -> AIOKafkaConsumer:
    return make_consumer(settings, "dlq", group=group)


def _redrive_group(settings: Settings, subscription_id: str) -> str:
    return Groups(settings.kafka.topic_prefix).dlq_redrive(subscription_id)


async def _partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    found = await partitions(settings.kafka, [topic])
    if not found:
        raise KafkaUnavailable(f"topic {topic} does not exist")
    return found


async def _read_until(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> list[Any]:
    """Every record from the consumer's positions up to `ends`, per partition in order."""
    records: list[Any] = []
    open_parts = {tp for tp, end in ends.items() if await consumer.position(tp) < end}
    while open_parts:
        batches = await consumer.getmany(*open_parts, timeout_ms=_POLL_MS, max_records=_BATCH)
        for tp, batch in batches.items():
            records.extend(r for r in batch if r.offset < ends[tp])
        open_parts = {tp for tp in open_parts if await consumer.position(tp) < ends[tp]}
    return records


async def list_dead_letters(settings: Settings, subscription_id: str) -> list[DeadLetter]:
    """The dead letters of one subscription, oldest first per partition."""
    topic = Topics(settings.kafka.topic_prefix).dlq(subscription_id)
    consumer = _consumer(settings, None)
    await consumer.start()
    try:
        parts = await _partitions(settings, topic)
        consumer.assign(parts)
        committed = await _committed(settings, subscription_id, parts)
        await consumer.seek_to_beginning(*parts)
        ends = {tp: int(o) for tp, o in (await consumer.end_offsets(parts)).items()}
        records = await _read_until(consumer, ends)
    except KafkaError as exc:
        raise KafkaUnavailable(f"cannot read {topic}: {exc}") from exc
    finally:
        await consumer.stop()
    letters = []
    for r in records:
        headers = raw_headers(r.headers)  # a null header value stays null
        found = {k: v.decode("utf-8", "replace") for k, v in headers if v is not None}
        ref = event_ref(r.key, headers, r.value)
        letters.append(
            DeadLetter(
                event_id=ref.id,
                source=ref.source,
                type=ref.type,
                time=ref.time,
                error=found.get(ERROR_HEADER, ""),
                detail=found.get(DETAIL_HEADER, ""),
                attempts=_attempts(dict(headers).get(ATTEMPTS_HEADER)),
                partition=r.partition,
                offset=r.offset,
                redriven=r.offset < committed.get(TopicPartition(r.topic, r.partition), 0),
            )
        )
    return letters


async def _committed(
    settings: Settings, subscription_id: str, parts: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    consumer = _consumer(settings, _redrive_group(settings, subscription_id))
    await consumer.start()
    try:
        consumer.assign(list(parts))
        out = {}
        for tp in parts:
            offset = await consumer.committed(tp)
            out[tp] = int(offset) if offset is not None else 0
        return out
    finally:
        await consumer.stop()


async def _purpose_of(settings: Settings, subscription_id: str) -> str:
    store = SubscriptionStore(settings, name="dlq-store")
    await store.start()
    try:
        await store.ready()
        subscription = store.get(subscription_id)
    finally:
        await store.stop()
    if subscription is None:
        raise ValueError(f"no subscription {subscription_id}")
    if not subscription.active:
        log.warning(
            "subscription %s is retired: redriven letters wait in its deliver topic",
            subscription_id,
        )
    return subscription.purpose


async def redrive(
    settings: Settings,
    subscription_id: str,
    *,
    progress: Progress | None = None,
    purpose: str | None = None,
) -> int:
    """Append the dead letters not redriven before to the deliver topic, in order; their count.

    Each redriven letter is recorded as `redriven` in the delivery log under the
    subscription's purpose (read from the subscription set unless given). Offsets are
    committed after the broker has every appended record, so an interrupted redrive repeats
    at most its last batch (at-least-once, like delivery).
    """
    if purpose is None:
        purpose = await _purpose_of(settings, subscription_id)
    topics = Topics(settings.kafka.topic_prefix)
    source, target = topics.dlq(subscription_id), topics.deliver(subscription_id)
    consumer = _consumer(settings, _redrive_group(settings, subscription_id))
    producer = make_producer(settings, f"dlq-redrive-{subscription_id}")
    await consumer.start()
    await producer.start()
    done = 0
    try:
        parts = await _partitions(settings, source)
        consumer.assign(parts)  # manual assignment: one redrive at a time is the operator's job
        for tp in parts:
            if await consumer.committed(tp) is None:
                await consumer.seek_to_beginning(tp)
        ends = {tp: int(o) for tp, o in (await consumer.end_offsets(parts)).items()}
        positions = {tp: await consumer.position(tp) for tp in parts}
        total = sum(max(0, ends[tp] - positions[tp]) for tp in parts)
        if progress is not None:
            progress(0, total)
        open_parts = {tp for tp in parts if positions[tp] < ends[tp]}
        while open_parts:
            batches = await consumer.getmany(*open_parts, timeout_ms=_POLL_MS, max_records=_BATCH)
            futures: list[asyncio.Future[Any]] = []
            commit: dict[TopicPartition, int] = {}
            for tp, batch in batches.items():
                for r in batch:
                    if r.offset >= ends[tp]:
                        break
                    headers = raw_headers(r.headers)  # a null header value stays null
                    futures.append(
                        await producer.send(
                            target, r.value, key=r.key, headers=list(_redriven_headers(headers))
                        )
                    )
                    ref = event_ref(r.key, headers, r.value)
                    attempts = dict(headers).get(ATTEMPTS_HEADER)
                    futures.append(
                        await log_attempt(
                            producer,
                            topics,
                            delivery_attempt(
                                subscription=subscription_id,
                                purpose=purpose,
                                ref=ref,
                                outcome="redriven",
                                attempt=_attempts(attempts),
                            ),
                        )
                    )
                    commit[tp] = r.offset + 1
                    done += 1
            await asyncio.gather(*futures)
            if commit:
                await consumer.commit(commit)
                if progress is not None:
                    progress(done, total)
            open_parts = {tp for tp in open_parts if await consumer.position(tp) < ends[tp]}
    except KafkaError as exc:
        raise KafkaUnavailable(f"redrive of {subscription_id} failed: {exc}") from exc
    finally:
        await producer.stop()
        await consumer.stop()
    log.info("redrove %d dead letters of subscription %s", done, subscription_id)
    return done
