"""Creating topics: in CreateTopics requests of `CREATE_CHUNK`, with an outcome per topic
(created, there already, refused and why), and, when asked, waiting until the cluster's
metadata has them: the controller answers before the brokers hold the partitions, so a
record naming a topic written on that answer alone could be routed to a topic not there.

Topics are created with the configured replication factor and `min.insync.replicas`
(defaults 3 and 2: a cluster's), never a value of our own that would override the cluster.
`streams.kafka.topics` says which topics the bus has; this module only makes them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka.admin import NewTopic
from aiokafka.errors import (
    InvalidReplicationFactorError,
    KafkaError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    for_code,
)

from streams.config import KafkaSettings
from streams.exceptions import ConfigurationError, KafkaUnavailable, TopicsRefused
from streams.kafka.clients import make_admin
from streams.kafka.transport import check_access

__all__ = [
    "CREATE_CHUNK",
    "Creation",
    "TopicSpec",
    "create_missing",
    "create_topics",
    "ensure_topics",
]

# Topics per CreateTopics request: the controller answers a request once all its topics
# exist, so a bounded request keeps that wait well inside `kafka.request_timeout_s`.
CREATE_CHUNK = 500
# How often `ensure_topics` looks for topics it created: soon, then less and less often.
_LOOK_FIRST_S, _LOOK_MAX_S = 0.01, 0.5
# How long a broker may take per partition still pending before a topic that does not show
# is given up, beside `kafka.request_timeout_s`: a broker making at least 50 partitions a
# second. A broker publishes new topics in whole metadata deltas, each only once it made the
# logs of every partition in it: thousands of topics created at once (`subscriptions apply`)
# show nothing for tens of seconds on a busy machine (measured: 6,000 partitions in 70 s on
# 2 shared cores), and are there all the same.
_PER_PARTITION_S = 0.02


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic as the bus wants it."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Creation:
    """What `ensure_topics` found and did: the topics it `created`, those that `existed`
    already (or another process created first), and those the cluster `refused`, each with
    the error that says why (a `ConfigurationError` naming the setting, or Kafka's own)."""

    created: list[str] = field(default_factory=list)
    existed: list[str] = field(default_factory=list)
    refused: dict[str, Exception] = field(default_factory=dict)


class _Admin(Protocol):
    """What topic creation needs of an admin client (aiokafka's, or a test's fake)."""

    async def list_topics(self) -> list[str]: ...

    async def create_topics(
        self, new_topics: list[NewTopic], timeout_ms: int | None = ...
    ) -> Any: ...

    async def describe_topics(self, topics: list[str] | None = ...) -> list[Any]: ...


async def create_topics(settings: KafkaSettings, specs: Sequence[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Idempotent.

    A cluster that refuses the credentials or the transport is a `ConfigurationError` naming
    the setting (`streams.kafka.clients.check_access`); a refused topic raises its error (the
    first, once every request was answered)."""
    creation = await ensure_topics(settings, specs, wait=False)
    for error in creation.refused.values():
        raise error
    return creation.created


async def ensure_topics(
    settings: KafkaSettings,
    specs: Sequence[TopicSpec],
    *,
    chunk: int = CREATE_CHUNK,
    wait: bool = True,
    new: bool = False,
) -> Creation:
    """Create the topics of `specs` that do not exist yet, `chunk` to a CreateTopics request,
    wait (`wait`) until the cluster's metadata has them, and say per topic what became of it
    (a refusal is reported, not raised: the caller decides what may go ahead without it).

    `new`: the topics are expected not to exist (a new subscription's), so the cluster's
    list of every topic is not asked for (with thousands of topics that listing was most of
    the cost of one subscription); CreateTopics says which exist all the same. A client that
    may not create topics gets no list either: leave `new` off for topics that may be there.
    """
    await check_access(settings)
    admin = make_admin(settings)
    try:
        await admin.start()
        return await create_missing(admin, settings, specs, chunk=chunk, wait=wait, new=new)
    except KafkaError as exc:
        raise KafkaUnavailable(
            f"cannot create topics on {settings.bootstrap_servers}: {exc}"
        ) from exc
    finally:
        await admin.close()


async def create_missing(
    admin: _Admin,
    settings: KafkaSettings,
    specs: Sequence[TopicSpec],
    *,
    chunk: int,
    wait: bool,
    new: bool = False,
) -> Creation:
    """`ensure_topics` on a started admin client: one metadata request for what exists
    (skipped when the topics are expected to be `new`), the missing topics in requests of
    at most `chunk` topics each, then (`wait`) metadata requests until those are there."""
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    creation = Creation()
    existing = set() if new else set(await admin.list_topics())
    missing: dict[str, TopicSpec] = {}
    for spec in specs:
        if spec.name in existing:
            creation.existed.append(spec.name)
        else:
            missing.setdefault(spec.name, spec)
    base = {"min.insync.replicas": str(settings.min_insync_replicas)}
    requests = [
        NewTopic(
            name=s.name,
            num_partitions=s.partitions,
            replication_factor=settings.replication_factor,
            topic_configs={**base, **s.config},
        )
        for s in missing.values()
    ]
    timeout_ms = int(settings.request_timeout_s * 1000)
    for start in range(0, len(requests), chunk):
        asked = requests[start : start + chunk]
        response = await admin.create_topics(asked, timeout_ms=timeout_ms)
        for topic, code, *rest in response.topic_errors:
            if code == 0:
                creation.created.append(topic)
            elif code == TopicAlreadyExistsError.errno:  # another process was first: fine
                creation.existed.append(topic)
            else:
                creation.refused[topic] = _refusal(settings, topic, code, rest[0] if rest else None)
    if wait:
        # a topic another made may have another count: there with a leader is enough
        made = {n: missing[n].partitions for n in creation.created}
        made.update(dict.fromkeys((n for n in creation.existed if n in missing), 1))
        await _await_visible(admin, settings, made, creation, chunk=chunk)
    return creation


async def _await_visible(
    admin: _Admin,
    settings: KafkaSettings,
    pending: dict[str, int],
    creation: Creation,
    *,
    chunk: int,
) -> None:
    """Wait until every topic of `pending` (name: partitions) is in the cluster's metadata
    with a leader for each partition. The controller answers CreateTopics before the
    brokers hold the partitions (a few ms each), so a record naming a topic written on that
    answer alone could be routed to a topic not there yet. A topic still missing once
    `kafka.request_timeout_s`, plus `_PER_PARTITION_S` for each partition still pending,
    passed without any other appearing is refused."""
    delay, progress = _LOOK_FIRST_S, time.monotonic()
    while pending:
        seen = []
        names = sorted(pending)
        for start in range(0, len(names), chunk):
            for topic in await admin.describe_topics(names[start : start + chunk]):
                name, parts = topic["topic"], topic["partitions"]
                if topic["error_code"] == TopicAuthorizationFailedError.errno:
                    seen.append(name)  # created, but not ours to see: the create's word holds
                elif (
                    topic["error_code"] == 0
                    and len(parts) >= pending.get(name, 1)
                    and all(p["leader"] >= 0 for p in parts)
                ):
                    seen.append(name)
        for name in seen:
            pending.pop(name, None)
        now = time.monotonic()
        if seen:
            progress = now
        patience = settings.request_timeout_s + _PER_PARTITION_S * sum(pending.values())
        if pending and not seen and now - progress >= patience:
            creation.created[:] = [n for n in creation.created if n not in pending]
            creation.existed[:] = [n for n in creation.existed if n not in pending]
            for name in pending:
                creation.refused[name] = KafkaUnavailable(
                    f"topic {name} was created but is not in the cluster's metadata: none of "
                    f"the {len(pending)} topic(s) still missing appeared in {patience:.1f} s "
                    f"(kafka.request_timeout_s {settings.request_timeout_s:g} s and "
                    f"{_PER_PARTITION_S * 1000:g} ms for each of their "
                    f"{sum(pending.values())} partition(s))"
                )
            return
        if pending:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _LOOK_MAX_S)


def _refusal(settings: KafkaSettings, topic: str, code: int, message: str | None) -> Exception:
    """The error for a topic the cluster would not create, naming the setting where one is
    at fault."""
    if code == InvalidReplicationFactorError.errno:
        return ConfigurationError(
            f"cannot create topic {topic} with replication factor "
            f"{settings.replication_factor}: {message or 'too few brokers'} "
            "(on a one-node broker set kafka.replication_factor: 1, "
            "kafka.min_insync_replicas: 1 and kafka.allow_single_replica: true)"
        )
    if code == TopicAuthorizationFailedError.errno:
        return ConfigurationError(
            f"kafka.sasl_username {settings.sasl_username!r} may not create topic "
            f"{topic}, nor see it: create the bus's topics as the operator "
            "(`gemeentebus topics create`) and grant each role its own "
            "(`gemeentebus acls apply`, as a super user)"
        )
    error = for_code(code)
    why = f"{error.__name__}{f': {message}' if message else ''}"
    if error.retriable:  # the cluster busy or moving: the same request may succeed later
        return KafkaUnavailable(
            f"cannot create topic {topic} on {settings.bootstrap_servers}: {why}"
        )
    return TopicsRefused({topic: why})
