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
