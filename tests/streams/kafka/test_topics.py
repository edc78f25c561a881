"""Topics as the cluster has them: created as configured, and checked before the bus starts."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.kafka_local import LocalKafka, free_port_range
from streams.config import ClientConfig, Settings, load_settings
from streams.exceptions import ConfigurationError
from streams.kafka.clients import make_admin
from streams.kafka.topics import (
    Topics,
    TopicSpec,
    TopicState,
    bus_topics,
    create_topics,
    describe_topics,
    durability_problems,
    existing_topics,
    partitions,
    subscription_topics,
)
from streams.runner import prepare_topics

pytestmark = pytest.mark.kafka

_DAY_MS = 24 * 3600 * 1000


def _with(settings: Settings, *, mode: str | None = None, **kafka: object) -> Settings:
    update: dict[str, object] = {"kafka": settings.kafka.model_copy(update=kafka)}
    if mode is not None:
        update["mode"] = mode
    return settings.model_copy(update=update)


async def _visible(settings: Settings, topic: str) -> None:
    """Wait until the cluster's metadata names a topic just created."""
    async with asyncio.timeout(30):
        while topic not in await existing_topics(settings.kafka):  # noqa: ASYNC110 - polled
            await asyncio.sleep(0.1)


async def _described(settings: Settings, names: list[str]) -> dict[str, TopicState]:
    """The state of topics just created, once the cluster's metadata has every one of them."""
    async with asyncio.timeout(30):
        while len(states := await describe_topics(settings.kafka, names)) < len(names):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    return states


async def test_topics_get_the_configured_replication_not_our_own(settings: Settings) -> None:
    # the defaults are a cluster's (3 and 2): a one-node broker cannot hold them, and says so
    three = _with(settings, replication_factor=3, min_insync_replicas=2)
    with pytest.raises(ConfigurationError, match="replication factor 3") as refused:
        await create_topics(three.kafka, [TopicSpec(f"{settings.kafka.topic_prefix}.x", 1)])
    assert "kafka.allow_single_replica: true" in str(refused.value)


async def test_ingress_retention_is_a_setting(settings: Settings) -> None:
    settings = _with(settings, ingress_retention_days=9)
    specs = bus_topics(settings.kafka, ())
    await create_topics(settings.kafka, specs)
    t = Topics(settings.kafka.topic_prefix)
    states = await _described(settings, [t.ingress, t.subscriptions])
    assert states[t.ingress].retention_ms == 9 * _DAY_MS
    assert states[t.ingress].replicas == 1
    assert states[t.ingress].min_insync_replicas == 1


async def test_one_replica_is_a_problem_unless_allowed(
    settings: Settings, bus_topics: Topics
) -> None:
    states = await _described(settings, [bus_topics.ingress])
    assert durability_problems(settings, states.values()) == []  # allowed in the fixture
    strict = _with(settings, allow_single_replica=False)
    [problem] = durability_problems(strict, states.values())
    assert problem.startswith(f"topic {bus_topics.ingress} has 1 replica")


async def test_production_refuses_single_replica_topics(settings: Settings) -> None:
    strict = _with(settings, mode="production", allow_single_replica=False)
    with pytest.raises(ConfigurationError, match="refusing to start in production: topic"):
        await prepare_topics(strict)


async def test_short_retention_is_refused_in_production_and_warned_otherwise(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    short = _with(settings, ingress_retention_days=1)  # retry window 1 day + margin 1 day
    with caplog.at_level(logging.WARNING):
        await prepare_topics(short)
    t = Topics(settings.kafka.topic_prefix)
    warned = [r.getMessage() for r in caplog.records if "retry window" in r.getMessage()]
    assert warned == [
        f"topic {t.ingress} keeps records 1.0 days, less than the retry window plus a "
        "margin (2.0 days): raise its retention.ms"
    ]
    with pytest.raises(ConfigurationError, match=f"topic {t.ingress} keeps records 1.0 days"):
        await prepare_topics(short.model_copy(update={"mode": "production"}))


async def test_deliver_topics_are_checked_too(settings: Settings, bus_topics: Topics) -> None:
    short = _with(settings, deliver_retention_days=1)
    await create_topics(short.kafka, subscription_topics(short.kafka, "gemeente-0363"))
    await _visible(settings, bus_topics.deliver("gemeente-0363"))
    with pytest.raises(ConfigurationError, match=r"deliver\.gemeente-0363 keeps records 1\.0"):
        await prepare_topics(short.model_copy(update={"mode": "production"}))


async def test_a_lost_subscription_set_is_refused_not_recreated(
    settings: Settings, bus_topics: Topics
) -> None:
    await create_topics(settings.kafka, [TopicSpec(bus_topics.deliver("gemeente-0363"), 1)])
    await _visible(settings, bus_topics.deliver("gemeente-0363"))

    admin = make_admin(settings.kafka)
    await admin.start()
    try:
        await admin.delete_topics([bus_topics.subscriptions])
    finally:
        await admin.close()
    with pytest.raises(ConfigurationError, match="the subscription set was lost"):
        await prepare_topics(settings)


async def test_each_kafka_publisher_gets_an_ingress_topic_of_its_own(settings: Settings) -> None:
    """Partitioned and kept like the shared ingress topic, and checked like it."""
    grant = {"types": ["nl.brp.persoon-verhuisd"], "sources": ["*"]}
    clients = [
        ClientConfig(id="brp", kafka_principal="User:brp-publisher", publish=grant),  # type: ignore[arg-type]
        ClientConfig(id="zaken.app", kafka_principal="User:zaken", publish=grant),  # type: ignore[arg-type]
        ClientConfig(id="http-only", token_sha256="0" * 64, publish=grant),  # type: ignore[arg-type]
        ClientConfig(id="reader", kafka_principal="User:reader"),  # no publish grant
    ]
    settings = _with(settings, ingress_retention_days=9).model_copy(
        update={"clients": tuple(clients)}
    )
    t = Topics(settings.kafka.topic_prefix)
    await prepare_topics(settings)
    present = await existing_topics(settings.kafka)
    assert sorted(n for n in present if n.startswith(f"{t.ingress}.")) == [
        t.publisher_ingress("brp"),
        t.publisher_ingress("zaken.app"),
    ]
    states = await _described(settings, [t.ingress, t.publisher_ingress("brp")])
    assert states[t.publisher_ingress("brp")].retention_ms == 9 * _DAY_MS
    parts = await partitions(settings.kafka, [t.ingress, t.publisher_ingress("brp")])
    assert [p.partition for p in parts if p.topic == t.publisher_ingress("brp")] == [0, 1, 2]
    assert len(parts) == 2 * settings.kafka.partitions

    # their retention is checked like the shared one's
    kept_a_day = TopicState(t.publisher_ingress("brp"), 1, 1, _DAY_MS)
    assert durability_problems(settings, [kept_a_day]) == [
        f"topic {t.publisher_ingress('brp')} keeps records 1.0 days, less than the retry window "
        "plus a margin (2.0 days): raise its retention.ms"
    ]


@pytest.mark.slow
async def test_topics_create_on_three_nodes_gives_three_replicas_two_in_sync(
    tmp_path: Path,
) -> None:
    """`gemeentebus kafka up --nodes 3` then `topics create`, with the default settings."""
    port = free_port_range(6)
    kafka = LocalKafka(
        data_dir=tmp_path / "kafka",
        cache_dir=load_settings().local_kafka.cache_dir,
        nodes=3,
        port=port,
        heap_mb=256,
    )
    bootstrap = await asyncio.to_thread(kafka.up, progress=lambda line: None)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GEMEENTEBUS_")}
        env.update({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "GEMEENTEBUS_KAFKA__PARTITIONS": "1"})
        created = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "streams.cli", "topics", "create"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert created.returncode == 0, created.stderr
        defaults = load_settings().kafka.model_copy(update={"bootstrap_servers": bootstrap})
        t = Topics(defaults.topic_prefix)
        names = [t.ingress, t.subscriptions, t.deliveries]
        async with asyncio.timeout(30):  # until every node's metadata has them
            while len(states := await describe_topics(defaults, names)) < len(names):  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        assert {(s.replicas, s.min_insync_replicas) for s in states.values()} == {(3, 2)}
    finally:
        await asyncio.to_thread(kafka.down)
