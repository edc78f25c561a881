"""`gemeentebus subscriptions apply` as an operator runs it: a real process over a real broker."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka_reading import transport_config
from keys import SECRETS_KEY

from streams.config import Settings
from streams.contract.attributes import OVERLEDEN, VERHUISD
from streams.kafka.clients import make_admin
from streams.kafka.topics import Topics, TopicSpec, create_topics
from streams.routing.store import SubscriptionStore

pytestmark = pytest.mark.kafka

DEADLINE_S = 60.0


def entry(sub_id: str, owner: str, **changes: Any) -> dict[str, Any]:
    return {
        "id": sub_id,
        "owner": owner,
        "sink": f"https://{owner}.example/events",
        "protocol": "HTTP",
        "types": [VERHUISD],
        **changes,
    }


@pytest.fixture
def config(settings: Settings, tmp_path: Path) -> Path:
    """The bus's configuration file: this test's broker and topics, two subscriber clients."""
    clients = [
        {
            "id": owner,
            "token_sha256": hashlib.sha256(owner.encode()).hexdigest(),
            "subscribe": {"types": ["nl.brp.*"], "purpose": "basisregistratie"},
        }
        for owner in ("gemeente-0363", "gemeente-0344")
    ]
    kafka = {
        **transport_config(settings),
        "topic_prefix": settings.kafka.topic_prefix,
        "partitions": settings.kafka.partitions,
        "deliver_partitions": 2,
        "dlq_partitions": 1,
        "replication_factor": 1,  # one broker, said explicitly
        "min_insync_replicas": 1,
        "allow_single_replica": True,
    }
    key = tmp_path / "secrets.key"  # the key that seals webhook secrets, from a file
    key.write_text(SECRETS_KEY + "\n")
    security = {"secrets_key_file": str(key)}
    path = tmp_path / "gemeentebus.yaml"
    path.write_text(yaml.safe_dump({"kafka": kafka, "clients": clients, "security": security}))
    return path


async def gemeentebus(config: Path, *args: str) -> tuple[int, str, str]:
    """Run the command; its exit code, stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMEENTEBUS_")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)  # the config file names the broker
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams.cli",
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(DEADLINE_S):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def stored(settings: Settings) -> dict[str, dict[str, Any]]:
    store = SubscriptionStore(settings, name="check")
    await store.start()
    try:
        async with asyncio.timeout(DEADLINE_S):
            await store.ready()
        return {s.id: s.record_dict() for s in store}
    finally:
        await store.stop()


async def test_apply_is_idempotent(settings: Settings, config: Path, tmp_path: Path) -> None:
    file = tmp_path / "subscriptions.yaml"
    entries = [
        entry("amsterdam", "gemeente-0363", types=[VERHUISD, OVERLEDEN]),
        entry("utrecht", "gemeente-0344", sinkCredential={"accessToken": "utrecht-token"}),
    ]
    file.write_text(yaml.safe_dump(entries))

    code, out, err = await gemeentebus(config, "subscriptions", "apply", str(file))
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["created", "amsterdam"],
        ["created", "utrecht"],
    ]
    assert all("whsec_" in line for line in lines)  # each new secret, shown once
    first = await stored(settings)
    assert set(first) == {"amsterdam", "utrecht"}
    assert first["amsterdam"]["purpose"] == "basisregistratie"

    code, out, err = await gemeentebus(config, "subscriptions", "apply", str(file))
    assert code == 0, err
    assert out.splitlines() == ["unchanged amsterdam", "unchanged utrecht"]
    assert await stored(settings) == first  # same secrets, same creation times

    entries[1]["types"] = [VERHUISD, OVERLEDEN]
    file.write_text(yaml.safe_dump(entries))
    code, out, err = await gemeentebus(config, "subscriptions", "apply", str(file))
    assert code == 0, err
    assert out.splitlines() == ["unchanged amsterdam", "updated utrecht"]
    after = await stored(settings)
    assert after["utrecht"]["signingSecret"] == first["utrecht"]["signingSecret"]

    code, out, err = await gemeentebus(config, "subscriptions", "list")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == ["ID", "utrecht", "amsterdam"]


async def test_one_invalid_entry_applies_nothing(
    settings: Settings, config: Path, tmp_path: Path
) -> None:
    file = tmp_path / "subscriptions.yaml"
    entries = [
        entry("amsterdam", "gemeente-0363"),
        entry("utrecht", "gemeente-0344", filters=[{"regex": {"gemeentevan": "0344"}}]),
        entry("rotterdam", "gemeente-0599"),
    ]
    file.write_text(yaml.safe_dump(entries))
    code, out, err = await gemeentebus(config, "subscriptions", "apply", str(file))
    assert code == 2
    assert out == ""
    assert "2 errors; nothing applied" in err
    assert "[1] utrecht: filters[0]: unknown filter dialect" in err
    assert "[2] rotterdam: owner: must name a configured client" in err
    assert await stored(settings) == {}


async def test_add_and_remove(settings: Settings, config: Path, tmp_path: Path) -> None:
    file = tmp_path / "one.json"
    one = entry("placeholder", "gemeente-0363")
    del one["id"]  # `add` assigns one
    file.write_text(json.dumps(one))
    code, out, err = await gemeentebus(config, "subscriptions", "add", str(file))
    assert code == 0, err
    created = json.loads(out[: out.rindex("}") + 1])
    assert created["owner"] == "gemeente-0363"
    assert out.splitlines()[-1].startswith(f"created {created['id']}  signingSecret whsec_")
    assert set(await stored(settings)) == {created["id"]}

    code, out, err = await gemeentebus(config, "subscriptions", "remove", created["id"])
    assert (code, out) == (0, f"removed {created['id']}\n"), err
    assert await stored(settings) == {}
    code, out, err = await gemeentebus(config, "subscriptions", "remove", created["id"])
    assert code == 1
    assert "no subscription" in err


async def partition_counts(settings: Settings, names: list[str]) -> dict[str, int]:
    """Partitions per topic of `names` as the cluster's metadata has them now."""
    admin = make_admin(settings, "check")
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}


async def drop_topics(settings: Settings) -> None:
    """Delete this test's topics: hundreds of them on a shared broker slow every test."""
    admin = make_admin(settings, "cleanup")
    await admin.start()
    try:
        head = f"{settings.kafka.topic_prefix}."
        mine = [t for t in await admin.list_topics() if t.startswith(head)]
        for start in range(0, len(mine), 500):
            await admin.delete_topics(mine[start : start + 500])
    finally:
        await admin.close()


async def test_apply_of_many_creates_their_topics_and_writes_every_record(
    settings: Settings, config: Path, tmp_path: Path
) -> None:
    owners = ("gemeente-0363", "gemeente-0344")
    entries = [entry(f"sub-{i:03d}", owners[i % 2]) for i in range(200)]
    file = tmp_path / "subscriptions.yaml"
    file.write_text(yaml.safe_dump(entries))
    topics = Topics(settings.kafka.topic_prefix)
    try:
        code, out, err = await gemeentebus(config, "subscriptions", "apply", str(file))
        assert code == 0, err
        assert [line.split()[:2] for line in out.splitlines()] == [
            ["created", e["id"]] for e in entries
        ]
        deliver = [topics.deliver(e["id"]) for e in entries]
        dlq = [topics.dlq(e["id"]) for e in entries]
        # there when the command has returned, with the partitions the configuration says
        counts = await partition_counts(settings, deliver + dlq)
        assert counts == {**dict.fromkeys(deliver, 2), **dict.fromkeys(dlq, 1)}
        held = await stored(settings)
        assert sorted(held) == [e["id"] for e in entries]
        assert all(held[e["id"]]["sink"] == e["sink"] for e in entries)
    finally:
        await drop_topics(settings)


async def test_a_refused_topic_leaves_its_subscription_out_and_names_it(
    settings: Settings, config: Path, tmp_path: Path
) -> None:
    topics = Topics(settings.kafka.topic_prefix)
    # Kafka refuses a topic whose name differs from an existing one's only in '.' vs '_'
    clash = topics.dlq("utrecht").replace(".", "_")
    await create_topics(settings.kafka, [TopicSpec(clash, 1)])
    entries = [entry(name, "gemeente-0363") for name in ("amsterdam", "utrecht", "zwolle")]
    file = tmp_path / "subscriptions.yaml"
    file.write_text(yaml.safe_dump(entries))
    try:
        code, out, err = await gemeentebus(config, "subscriptions", "apply", str(file))
        assert code == 1
        # the others were written, and their secrets shown: this is the only time
        lines = out.splitlines()
        assert [line.split()[:2] for line in lines] == [["created", "amsterdam"],
                                                        ["created", "zwolle"]]  # fmt: skip
        assert all("whsec_" in line for line in lines)
        assert f"{topics.dlq('utrecht')}: InvalidTopicError" in err
        assert "subscription(s) not written: utrecht" in err
        assert sorted(await stored(settings)) == ["amsterdam", "zwolle"]
        # the deliver topic made before the refusal stays; a rerun finds it and goes on
        assert topics.deliver("utrecht") in await partition_counts(
            settings, [topics.deliver("utrecht")]
        )
    finally:
        await drop_topics(settings)


def test_operators_are_held_to_the_sink_policy(settings: Settings) -> None:
    from streams.config import ClientConfig, DeliverySettings
    from streams.operations.subscription_set import InvalidSubscriptions, prepare

    owner = ClientConfig.model_validate(
        {
            "id": "gemeente-0363",
            "token_sha256": hashlib.sha256(b"t").hexdigest(),
            "subscribe": {"types": ["nl.brp.*"], "purpose": "basisregistratie"},
        }
    )
    production = settings.model_copy(update={"mode": "production", "clients": (owner,)})
    internal = [
        entry("a", "gemeente-0363", sink="http://127.0.0.1:8080/events"),
        entry("b", "gemeente-0363", sink="https://[::ffff:10.0.0.1]/events"),
    ]
    with pytest.raises(InvalidSubscriptions) as refused:
        prepare(production, internal, {})
    assert [e.split(":", 1)[0] for e in refused.value.errors] == ["[0] a", "[1] b"]
    assert all("sink_not_allowed" in e for e in refused.value.errors)
    agreed = DeliverySettings(allow_http=True, allowed_private_sinks=["127.0.0.0/8", "10.0.0.0/8"])
    plans = prepare(production.model_copy(update={"delivery": agreed}), internal, {})
    assert [p.action for p in plans] == ["created", "created"]
