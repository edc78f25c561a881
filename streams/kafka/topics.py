"""The bus's Kafka topics (SPEC §3): names, settings, idempotent creation, and the checks
`run` makes before it starts (durability and retention, see `durability_problems`).

How topics are made (batched, an outcome per topic, waiting until the metadata has them)
is `streams.kafka.creation`; its names are re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    KafkaError,
    UnknownTopicOrPartitionError,
    for_code,
)

from streams.config import KafkaSettings, Settings
from streams.exceptions import KafkaUnavailable
from streams.kafka.clients import make_admin
from streams.kafka.creation import (
    CREATE_CHUNK,
    Creation,
    TopicSpec,
    create_missing,
    create_topics,
    ensure_topics,
)

__all__ = [
    "CREATE_CHUNK",
    "RETENTION_MARGIN_S",
    "Creation",
    "Groups",
    "TopicSpec",
    "TopicState",
    "Topics",
    "bus_topics",
    "create_missing",
    "create_topics",
    "describe_topics",
    "durability_problems",
    "ensure_topics",
    "existing_topics",
    "partitions",
    "subscription_topics",
]

log = logging.getLogger(__name__)

_DAY_MS = 24 * 3600 * 1000
# Retention must outlast the retry window by this much: a day to notice a stalled
# subscriber and act before its undelivered records age out of the topic.
RETENTION_MARGIN_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Topics:
    """The names of the bus's topics under one prefix (SPEC §3 with the default `gemeentebus`).

    Another prefix gives a separate namespace on a shared cluster, and each test its own.
    """

    prefix: str = "gemeentebus"

    @property
    def ingress(self) -> str:
        """What trusted writers publish, before validation (no grant is checked on it)."""
        return f"{self.prefix}.ingress"

    def publisher_ingress(self, client_id: str) -> str:
        """What one Kafka publisher writes (its principal alone may), before validation: judged
        against its grant."""
        return f"{self.ingress}.{client_id}"

    def publisher_of(self, topic: str) -> str | None:
        """The client id whose own ingress topic `topic` is, or None."""
        head = f"{self.ingress}."
        return topic[len(head) :] if topic.startswith(head) and len(topic) > len(head) else None

    @property
    def invalid(self) -> str:
        """Rejected input, byte for byte, with error headers."""
        return f"{self.prefix}.invalid"

    @property
    def subscriptions(self) -> str:
        """Internal: the subscription set (compacted, key = subscription id)."""
        return f"{self.prefix}.subscriptions"

    @property
    def retirements(self) -> str:
        """Internal: which version of a subscription a `410 Gone` retired (compacted, key =
        subscription id; the delivery role writes it, `streams.routing.retirements`)."""
        return f"{self.prefix}.retirements"

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
        """Internal: the audit trail, every change and operator action (`streams.operations.
        audit`; kept `kafka.audit_retention_days`, not compacted)."""
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
class Groups:
    """The consumer groups of the bus under one prefix (the ACLs of `streams.kafka.acls`
    name them; every group id the bus uses is made here, or by `make_app` as `app`)."""

    prefix: str = "gemeentebus"

    def app(self, name: str) -> str:
        """A Faust app's group: its id (`streams.kafka.clients.make_app`)."""
        return f"{self.prefix}.{name}"

    @property
    def validator(self) -> str:
        """The validating worker's group (`streams.routing.worker.Validator`)."""
        return self.app("validator")

    @property
    def delivery(self) -> str:
        """Every delivery process's reader: the deliver topics of all HTTP subscriptions,
        their partitions spread over the processes (`connectors.reader`)."""
        return f"{self.prefix}.delivery"

    def deliver(self, subscription_id: str) -> str:
        """Before the shared group: one HTTP subscription's own courier group. Read only for
        the committed offsets a subscription's partitions start from the first time the
        delivery group takes them (`connectors.reader`)."""
        return f"{self.prefix}.deliver.{subscription_id}"

    def dlq_redrive(self, subscription_id: str) -> str:
        """What a redrive of one subscription's dead letters took (`streams.delivery.dlq`)."""
        return f"{self.prefix}.dlq-redrive.{subscription_id}"

    def subscriber(self, client_id: str) -> str:
        """The prefix of a KAFKA subscriber's own groups: `<prefix>.sub.<client id>.<any>`."""
        return f"{self.prefix}.sub.{client_id}."


def _retention(days: int, *, compact: bool = False) -> dict[str, str]:
    config = {"retention.ms": str(days * _DAY_MS)}
    if compact:
        config["cleanup.policy"] = "compact"
    return config


def bus_topics(
    settings: KafkaSettings, event_types: Iterable[str], publishers: Iterable[str] = ()
) -> list[TopicSpec]:
    """Every topic the bus needs before any subscription exists; `publishers` are the client
    ids of the Kafka publishers (`Settings.kafka_publishers`), each with an ingress topic of
    its own, partitioned and kept like the shared one."""
    t, p, keep = Topics(settings.topic_prefix), settings.partitions, settings.events_retention_days
    ingress = _retention(settings.ingress_retention_days)
    specs = [
        TopicSpec(t.ingress, p, ingress),
        *(TopicSpec(t.publisher_ingress(c), p, dict(ingress)) for c in sorted(set(publishers))),
        TopicSpec(t.invalid, p, _retention(settings.invalid_retention_days)),
        TopicSpec(t.subscriptions, 1, {"cleanup.policy": "compact"}),
        TopicSpec(t.retirements, 1, {"cleanup.policy": "compact"}),
        TopicSpec(t.replays, 1, {"cleanup.policy": "compact"}),
        # The delivery log answers "who received what about this person" (Logboek
        # Dataverwerkingen): kept as long as the events themselves.
        TopicSpec(t.deliveries, p, _retention(keep)),
        TopicSpec(t.audit, 1, _retention(settings.audit_retention_days)),
    ]
    specs += [TopicSpec(t.events(e), p, _retention(keep)) for e in sorted(event_types)]
    return specs


def subscription_topics(settings: KafkaSettings, subscription_id: str) -> list[TopicSpec]:
    """The delivery topic and dead-letter topic of one subscription, with
    `kafka.deliver_partitions` and `kafka.dlq_partitions` partitions."""
    t = Topics(settings.topic_prefix)
    deliver = _retention(settings.deliver_retention_days)
    return [
        TopicSpec(t.deliver(subscription_id), settings.deliver_partitions, deliver),
        TopicSpec(
            t.dlq(subscription_id),
            settings.dlq_partitions,
            _retention(settings.events_retention_days),
        ),
    ]


async def existing_topics(settings: KafkaSettings) -> set[str]:
    """The names of every topic in the cluster (a metadata request; raises KafkaError)."""
    admin = make_admin(settings)
    try:
        await admin.start()
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def partitions(settings: KafkaSettings, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of those of `topics` that exist, sorted (a metadata request through the
    admin API; raises `KafkaUnavailable` when the cluster does not answer)."""
    names = sorted(set(topics))
    if not names:
        return []
    admin = make_admin(settings)
    try:
        await admin.start()
        described = await admin.describe_topics(names)
    except KafkaError as exc:
        raise KafkaUnavailable(
            f"cannot list partitions on {settings.bootstrap_servers}: {exc}"
        ) from exc
    finally:
        await admin.close()
    return sorted(
        TopicPartition(t["topic"], p["partition"])
        for t in described
        if t.get("error_code") == 0
        for p in t["partitions"]
    )


@dataclass(frozen=True, slots=True)
class TopicState:
    """A topic as the cluster has it: the fewest replicas of any partition, its settings."""

    name: str
    replicas: int
    min_insync_replicas: int
    retention_ms: int  # -1: kept forever


# Topics per metadata or config request of `describe_topics`.
DESCRIBE_CHUNK = 500


async def describe_topics(settings: KafkaSettings, names: Sequence[str]) -> dict[str, TopicState]:
    """The state of each topic of `names` that exists (missing ones are left out).

    Asked `DESCRIBE_CHUNK` topics to a request: every process describes every deliver topic
    when it starts, and one metadata and one config request for the 4,000 topics of 2,000
    subscriptions outlasted `kafka.request_timeout_s` on a busy broker (the delivery
    processes of the full chaos delivery-kill exited at start)."""
    admin = make_admin(settings)
    try:
        await admin.start()
        replicas: dict[str, int] = {}
        wanted = list(names)
        for start in range(0, len(wanted), DESCRIBE_CHUNK):
            for topic in await admin.describe_topics(wanted[start : start + DESCRIBE_CHUNK]):
                if topic["error_code"] == UnknownTopicOrPartitionError.errno:
                    continue
                if topic["error_code"] != 0:
                    raise for_code(topic["error_code"])(f"topic {topic['topic']}")
                counts = [len(p["replicas"]) for p in topic["partitions"]]
                replicas[topic["topic"]] = min(counts, default=0)
        keys = {"retention.ms": None, "min.insync.replicas": None}
        found = list(replicas)
        configs: dict[str, dict[str, str]] = {}
        for start in range(0, len(found), DESCRIBE_CHUNK):
            resources = [
                ConfigResource(ConfigResourceType.TOPIC, n, dict(keys))
                for n in found[start : start + DESCRIBE_CHUNK]
            ]
            for response in await admin.describe_configs(resources):
                for resource in response.to_object()["resources"]:
                    configs[resource["resource_name"]] = {
                        entry["config_names"]: entry["config_value"]
                        for entry in resource["config_entries"]
                    }
        return {
            name: TopicState(
                name=name,
                replicas=count,
                min_insync_replicas=int(configs.get(name, {}).get("min.insync.replicas", "1")),
                retention_ms=int(configs.get(name, {}).get("retention.ms", "-1")),
            )
            for name, count in replicas.items()
        }
    except KafkaError as exc:
        raise KafkaUnavailable(
            f"cannot describe topics on {settings.bootstrap_servers}: {exc}"
        ) from exc
    finally:
        await admin.close()


def durability_problems(settings: Settings, states: Iterable[TopicState]) -> list[str]:
    """What in the topics' replication and retention can lose acknowledged records.

    - one replica (one broker lost, its records lost), unless `kafka.allow_single_replica`;
    - ingress topics (the shared one and each publisher's) and deliver topics that drop
      records before the retry window plus `RETENTION_MARGIN_S` have passed: a stall that
      long becomes silent loss.
    """
    t = Topics(settings.kafka.topic_prefix)
    needed_ms = int((settings.delivery.retry_window_s + RETENTION_MARGIN_S) * 1000)
    deliver = t.deliver("")
    problems = []
    for state in sorted(states, key=lambda s: s.name):
        if state.replicas < 2 and not settings.kafka.allow_single_replica:
            problems.append(
                f"topic {state.name} has {state.replicas} replica: one broker lost loses its "
                "records (set kafka.allow_single_replica: true only on a one-node broker)"
            )
        holds_input = (
            state.name == t.ingress
            or t.publisher_of(state.name) is not None
            or (state.name.startswith(deliver) and not state.name.endswith(".dlq"))
        )
        if holds_input and 0 <= state.retention_ms < needed_ms:
            problems.append(
                f"topic {state.name} keeps records {state.retention_ms / _DAY_MS:.1f} days, "
                f"less than the retry window plus a margin "
                f"({needed_ms / _DAY_MS:.1f} days): raise its retention.ms"
            )
    return problems
