"""Writing a record whose header name is bytes that are not UTF-8, as any Kafka client can.

aiokafka writes header names as UTF-8 text, so the bus's own clients never make such a record;
a client in another language (or one bug away from it) does, and the bus must read it as a
dead letter (`streams.kafka.lenient`). The chaos suite and the tests make one here: a batch of
its own whose builder is aiokafka's Python one, which writes what `RawName.encode` returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

from streams.kafka.clients import Producer

__all__ = ["RawName", "send_raw_named"]


class RawName(str):
    """A header name that the Python batch builder writes as `raw`, byte for byte."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawName:
        name = super().__new__(cls, raw.decode("utf-8", "backslashreplace"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


async def send_raw_named(
    producer: Producer,
    topic: str,
    partition: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
) -> asyncio.Future[Any]:
    """Queue one record in a batch of its own (a `RawName` among `headers` goes out as its
    bytes); the future is done once the broker has it. `producer` must not be idempotent
    (`make_producer(..., enable_idempotence=False)`): aiokafka stamps producer state only
    into its own C builder, and fails, silently, in its sender task on any other."""
    if producer.idempotent:
        raise ValueError("send_raw_named needs a producer with enable_idempotence=False")
    batch = producer.create_batch()
    builder = batch._builder
    batch._builder = _DefaultRecordBatchBuilderPy(
        2,
        builder.compression_type if hasattr(builder, "compression_type") else 0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=0,
        batch_size=1024 * 1024,
    )
    if batch.append(key=key, value=value, timestamp=None, headers=list(headers)) is None:
        raise ValueError("the record does not fit in one batch")
    batch.close()
    future: asyncio.Future[Any] = await producer.send_batch(batch, topic, partition=partition)
    return future
