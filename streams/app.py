"""The Faust application and the producer every stream worker shares.

Faust is used for what it is good at: consumer groups, partition assignment and offset
commits. Producing goes through our own idempotent aiokafka producer (`acks=all`), whose
futures the agents await before a source message is acked (Faust's producer is only
idempotent inside transactions, and its `send()` returns before the broker has the record).
"""

from __future__ import annotations

from typing import Any

import faust
from aiokafka import AIOKafkaProducer

from streams.config import Settings

__all__ = ["make_app", "make_producer"]


def _kafka_url(bootstrap: str) -> list[str]:
    return [f"kafka://{server.strip()}" for server in bootstrap.split(",") if server.strip()]


def make_app(settings: Settings, name: str, **overrides: Any) -> faust.App:
    """A Faust app whose consumer group is `<topic prefix>.<name>`.

    Safe defaults: no web server (Faust's `/table/` views are unauthenticated), no
    auto-created internal topics beyond Faust's own, start at the earliest offset for a new
    group, commit often.
    """
    options: dict[str, Any] = {
        "broker": _kafka_url(settings.kafka.bootstrap_servers),
        "broker_client_id": f"{settings.kafka.client_id}-{name}",
        "web_enabled": False,
        "web_tables_enabled": False,
        "consumer_auto_offset_reset": "earliest",
        "topic_replication_factor": settings.kafka.replication_factor,
        "topic_partitions": settings.kafka.partitions,
        "topic_disable_leader": True,
        "broker_commit_interval": 1.0,
        "producer_acks": -1,
        "autodiscover": False,
        "store": "memory://",
        "table_cleanup_interval": 3600.0,
    }
    options.update(overrides)
    return faust.App(f"{settings.kafka.topic_prefix}.{name}", **options)


def make_producer(settings: Settings, name: str, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent producer (`acks=all`, ordered per partition); call `start()` on it."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka.bootstrap_servers,
        "client_id": f"{settings.kafka.client_id}-{name}",
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": int(settings.kafka.request_timeout_s * 1000),
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)
