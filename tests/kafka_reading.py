"""Reading a topic in a test: the first `count` records, failing loudly when fewer arrive."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer

from streams.config import Settings


async def consume(settings: Settings, topic: str, count: int, within: float = 20.0) -> list[Any]:
    """The first `count` records of `topic`; TimeoutError when fewer arrive in time."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=f"{settings.kafka.topic_prefix}.reader-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(within):
            while len(records) < count:
                for part in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(part)
    finally:
        await consumer.stop()
    return records
