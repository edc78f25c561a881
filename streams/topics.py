"""The bus's Kafka topics (SPEC §3): names, settings, and idempotent creation."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from streams.config import KafkaSettings
from streams.exceptions import KafkaUnavailable

__all__ = ["TopicSpec", "Topics", "bus_topics", "create_topics", "subscription_topics"]

log = logging.getLogger(__name__)

_DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Topics:
    """The names of the bus's topics under one prefix (SPEC §3 with the default `gemeentebus`).

    Another prefix gives a separate namespace on a shared cluster, and each test its own.
    """

    prefix: str = "gemeentebus"

    @property
    def ingress(self) -> str:
        """What publishers write, before validation."""
        return f"{self.prefix}.ingress"

    @property
    def invalid(self) -> str:
        """Rejected input, byte for byte, with error headers."""
        return f"{self.prefix}.invalid"

    @property
    def subscriptions(self) -> str:
        """Internal: the subscription set (compacted, key = subscription id)."""
        return f"{self.prefix}.subscriptions"

    @property
    def deliveries(self) -> str:
        """Internal: the delivery log, one record per attempt."""
        return f"{self.prefix}.deliveries"

    @property
    def replays(self) -> str:
        """Internal: replay requests and progress (compacted)."""
        return f"{self.prefix}.replays"

    @property
    def audit(self) -> str:
        """Internal: operator actions (replays, reconciliations, redrives)."""
        return f"{self.prefix}.audit"

    def events(self, event_type: str) -> str:
        """The record of truth for one event type."""
        return f"{self.prefix}.events.{event_type}"

    @property
    def events_prefix(self) -> str:
        return f"{self.prefix}.events."

    def deliver(self, subscription_id: str) -> str:
        """What one subscription is to receive, in order."""
        return f"{self.prefix}.deliver.{subscription_id}"

    def dlq(self, subscription_id: str) -> str:
        """What could not be delivered to one subscription after the retry window."""
        return f"{self.deliver(subscription_id)}.dlq"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic as the bus wants it."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def _retention(days: int, *, compact: bool = False) -> dict[str, str]:
    config = {"retention.ms": str(days * _DAY_MS)}
    if compact:
        config["cleanup.policy"] = "compact"
    return config


def bus_topics(settings: KafkaSettings, event_types: Iterable[str]) -> list[TopicSpec]:
    """Every topic the bus needs before any subscription exists."""
    t, p, keep = Topics(settings.topic_prefix), settings.partitions, settings.events_retention_days
    specs = [
        TopicSpec(t.ingress, p, _retention(7)),
        TopicSpec(t.invalid, p, _retention(settings.invalid_retention_days)),
        TopicSpec(t.subscriptions, 1, {"cleanup.policy": "compact"}),
        TopicSpec(t.replays, 1, {"cleanup.policy": "compact"}),
        # The delivery log answers "who received what about this person" (Logboek
        # Dataverwerkingen): kept as long as the events themselves.
        TopicSpec(t.deliveries, p, _retention(keep)),
        TopicSpec(t.audit, 1, _retention(keep)),
    ]
    specs += [TopicSpec(t.events(e), p, _retention(keep)) for e in sorted(event_types)]
    return specs


def subscription_topics(settings: KafkaSettings, subscription_id: str) -> list[TopicSpec]:
    """The delivery topic and dead-letter topic of one subscription."""
    t, p = Topics(settings.topic_prefix), settings.partitions
    return [
        TopicSpec(t.deliver(subscription_id), p, _retention(settings.deliver_retention_days)),
        TopicSpec(t.dlq(subscription_id), p, _retention(settings.events_retention_days)),
    ]


async def create_topics(settings: KafkaSettings, specs: Sequence[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Idempotent."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-admin",
        request_timeout_ms=int(settings.request_timeout_s * 1000),
    )
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        base = {"min.insync.replicas": str(settings.min_insync_replicas)}
        new = [
            NewTopic(
                name=s.name,
                num_partitions=s.partitions,
                replication_factor=settings.replication_factor,
                topic_configs={**base, **s.config},
            )
            for s in missing
        ]
        response = await admin.create_topics(new, timeout_ms=int(settings.request_timeout_s * 1000))
        created = []
        for topic, code, *_ in response.topic_errors:
            if code == 0:
                created.append(topic)
            elif code != TopicAlreadyExistsError.errno:  # another process was first: fine
                raise for_code(code)(f"topic {topic}")
        return created
    except KafkaError as exc:
        raise KafkaUnavailable(
            f"cannot create topics on {settings.bootstrap_servers}: {exc}"
        ) from exc
    finally:
        await admin.close()
