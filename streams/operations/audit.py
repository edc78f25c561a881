"""The operator audit trail (`gemeentebus.audit`): one writer for every operator action.

An entry is a JSON object: `action` (replay, reconcile, dlq_redrive, ...), `actor` (the
client id that asked), `at` (UTC, ISO 8601) and what the action was about, keyed by the
subscription it concerns so that one subscription's actions stay in order. Entries name
subscriptions and counts, never personal data. A write is confirmed by the cluster
(acks=all) before the caller goes on: an action that cannot be recorded fails.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from streams.config import Settings
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics

__all__ = ["record_action", "record_action_once"]


async def record_action(
    producer: AIOKafkaProducer, topics: Topics, action: str, actor: str, **what: Any
) -> None:
    """Record an operator action with a running producer; returns once the cluster has it."""
    entry = {"action": action, "actor": actor, "at": datetime.now(UTC).isoformat(), **what}
    key = str(what.get("subscription", "")).encode()
    await (await producer.send(topics.audit, json.dumps(entry, default=str).encode(), key=key))


async def record_action_once(settings: Settings, action: str, actor: str, **what: Any) -> None:
    """Record one operator action with a producer of its own (started and stopped here)."""
    producer = make_producer(settings, "audit")
    await producer.start()
    try:
        await record_action(producer, Topics(settings.kafka.topic_prefix), action, actor, **what)
    finally:
        await producer.stop()
