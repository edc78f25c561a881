"""The operator commands, run as an operator runs them: subprocesses against a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from clients import clients_env
from kafka_reading import transport_env
from keys import PSEUDONYM_KEY, SECRETS_KEY

from streams.config import Settings
from streams.contract.attributes import OVERLEDEN, VERHUISD
from streams.kafka.topics import Topics
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription, new_subscription_id
from streams.routing.worker import Validator

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **transport_env(settings),
        "GEMEENTEBUS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "GEMEENTEBUS_KAFKA__PARTITIONS": str(settings.kafka.partitions),
        "GEMEENTEBUS_KAFKA__REPLICATION_FACTOR": "1",  # one broker, said explicitly
        "GEMEENTEBUS_KAFKA__MIN_INSYNC_REPLICAS": "1",
        "GEMEENTEBUS_KAFKA__ALLOW_SINGLE_REPLICA": "true",
        "GEMEENTEBUS_HTTP__PORT": "0",  # every process serves /health and /ready
        "GEMEENTEBUS_SECURITY__PSEUDONYM_KEY": PSEUDONYM_KEY,
        "GEMEENTEBUS_SECURITY__SECRETS_KEY": SECRETS_KEY,
    }
    if "--config" not in args:  # the owners: their grants bind replays and reconciliations
        env |= clients_env(settings)
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def test_publish_replay_reconcile_dlq(settings: Settings, read_topic) -> None:
    started = datetime.now(UTC) - timedelta(seconds=5)
    assert _cli(settings, "topics", "create").returncode == 0
    published = await asyncio.to_thread(_cli, settings, "publish", "--generate", "60")
    assert published.returncode == 0, published.stderr
    assert "60 events" in published.stdout

    store = SubscriptionStore(settings)
    await store.start()
    validator = Validator(settings)
    await validator.start()
    try:
        await store.ready()
        # every event is routed before the subscription exists: it is to receive them by replay
        async with asyncio.timeout(60):
            while validator.processed < 60:  # noqa: ASYNC110 - polled by design
                await asyncio.sleep(0.1)
        topics = Topics(settings.kafka.topic_prefix)
        sub = await store.put(
            Subscription.model_validate(
                {
                    "id": new_subscription_id(),
                    "protocol": "KAFKA",
                    "sink": "kafka:",
                    "types": [VERHUISD, OVERLEDEN],
                    "owner": "brp",
                    "purpose": "test",
                }
            )
        )
    finally:
        await validator.stop()
        await store.stop()
    until = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()

    dlq = await asyncio.to_thread(_cli, settings, "dlq", "list", sub.id)
    assert dlq.returncode == 0 and "0 dead letter(s)" in dlq.stderr

    window = ("--from", started.isoformat(), "--to", until)
    replay = await asyncio.to_thread(_cli, settings, "replay", sub.id, *window)
    assert replay.returncode == 0, replay.stderr
    status = json.loads(replay.stdout)
    assert status["state"] == "done" and status["written"] > 0
    replayed = await read_topic(topics.deliver(sub.id), count=status["written"])
    assert len(replayed) == status["written"]
    assert all(json.loads(r.value)["replay"] for r in replayed)

    reconcile = await asyncio.to_thread(_cli, settings, "reconcile", sub.id, *window, "--json")
    assert reconcile.returncode == 1  # nothing was delivered: the report says what is missing
    report = json.loads(reconcile.stdout)
    assert report["published"]["count"] == status["written"]
    assert report["delivered"]["count"] == 0


async def test_topics_create_and_publish_as_a_kafka_publisher(
    settings: Settings, read_topic, tmp_path
) -> None:
    """`topics create` makes the publisher's own ingress topic; `publish --client` writes there."""
    config = tmp_path / "gemeentebus.yaml"
    config.write_text(
        "clients:\n"
        "  - id: brp\n"
        '    kafka_principal: "User:brp-publisher"\n'
        '    publish: {types: ["nl.brp.*"], sources: ["*"]}\n'
        "  - id: beheer\n"
        f'    token_sha256: "{"0" * 64}"\n'
        "    operator: true\n"
    )
    created = _cli(settings, "topics", "create", "--config", str(config))
    assert created.returncode == 0, created.stderr
    own = Topics(settings.kafka.topic_prefix).publisher_ingress("brp")
    assert f"created {own}" in created.stdout
    published = await asyncio.to_thread(
        _cli, settings, "publish", "--generate", "7", "--client", "brp", "--config", str(config)
    )
    assert published.returncode == 0, published.stderr
    assert published.stdout.strip() == f"7 events in {own}"
    assert len(await read_topic(own, count=7)) == 7
    refused = _cli(
        settings, "publish", "--generate", "1", "--client", "beheer", "--config", str(config)
    )
    assert refused.returncode == 2
    assert "client beheer is no Kafka publisher" in refused.stderr
