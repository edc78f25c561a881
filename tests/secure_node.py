"""One secured Kafka node for a test module: `LocalKafka(secure=True)` on free ports, small."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from connectors.kafka_local import LocalKafka, free_port_range
from streams.config import load_settings


@contextmanager
def secure_node(data_dir: Path, users: Sequence[str] = ()) -> Iterator[LocalKafka]:
    """A secured node (SASL_SSL, SCRAM for `users` besides its own, ACLs enforced), up for
    the `with` block and stopped after it."""
    kafka = LocalKafka(
        data_dir=data_dir,
        cache_dir=load_settings().local_kafka.cache_dir,
        port=free_port_range(2),
        heap_mb=256,
        start_timeout_s=120.0,
        secure=True,
        users=tuple(users),
    )
    try:
        kafka.up(progress=lambda line: None)
        yield kafka
    finally:
        kafka.down()
