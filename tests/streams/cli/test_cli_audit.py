"""The command line's changes and operator actions are in the audit trail as `cli:<os user>`,
one record each, refused ones with their code, and `gemeentebus audit` prints the trail as JSON
lines (issue 17, item 6). Subprocesses against the real broker, as an operator runs them."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka_reading import limit_record_size, transport_env
from keys import PSEUDONYM_KEY, SECRETS_KEY

from streams.config import Settings
from streams.contract.attributes import VERHUISD
from streams.kafka.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SUB = "cli-audit-sub"


def _cli(settings: Settings, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **transport_env(settings),
        "GEMEENTEBUS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "GEMEENTEBUS_KAFKA__PARTITIONS": "1",
        "GEMEENTEBUS_KAFKA__REPLICATION_FACTOR": "1",  # one broker, said explicitly
        "GEMEENTEBUS_KAFKA__MIN_INSYNC_REPLICAS": "1",
        "GEMEENTEBUS_KAFKA__ALLOW_SINGLE_REPLICA": "true",
        "GEMEENTEBUS_SECURITY__PSEUDONYM_KEY": PSEUDONYM_KEY,
        "GEMEENTEBUS_SECURITY__SECRETS_KEY": SECRETS_KEY,
    }
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


ENTRY = {
    "id": SUB,
    "owner": "gemeente-0363",
    "protocol": "HTTP",
    "sink": "https://gemeente.example/hook",
    "types": [VERHUISD],
}


def _files(tmp_path: Path) -> tuple[Path, Path]:
    """A configuration with one subscriber client, and a subscription of it."""
    config = tmp_path / "gemeentebus.yaml"
    config.write_text(
        "clients:\n"
        "  - id: gemeente-0363\n"
        "    token_sha256: '" + "0" * 64 + "'\n"
        f"    subscribe: {{types: ['{VERHUISD}']}}\n"
    )
    good = tmp_path / "sub.yaml"
    good.write_text(yaml.safe_dump(ENTRY))
    return config, good


async def test_cli_actions_are_audited_as_the_os_user(settings: Settings, tmp_path: Path) -> None:
    config, good = _files(tmp_path)
    entry = ENTRY
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump([{**entry, "id": "other", "types": ["nl.no.such-type"]}]))
    now = datetime.now(UTC)
    window = ["--from", (now - timedelta(minutes=5)).isoformat(), "--to", now.isoformat()]

    async def run(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(_cli, settings, config, *args)

    expected: list[tuple[list[str], int, tuple[Any, ...]]] = [
        (["topics", "create"], 0, ("topics_create", None, "ok", None)),
        (["subscriptions", "add", str(good)], 0, ("subscription_add", SUB, "ok", None)),
        (
            ["subscriptions", "apply", str(bad)],
            2,
            ("subscriptions_apply", None, "refused", "invalid_subscriptions"),
        ),
        (["reconcile", SUB, *window, "--json"], 0, ("reconcile", SUB, "ok", None)),
        (["replay", SUB, *window], 0, ("replay", SUB, "ok", None)),
        (["dlq", "redrive", SUB], 0, ("dlq_redrive", SUB, "ok", None)),
        (["subscriptions", "remove", SUB], 0, ("subscription_delete", SUB, "ok", None)),
        (
            ["subscriptions", "remove", SUB],
            1,
            ("subscription_delete", SUB, "refused", "not_found"),
        ),
    ]
    for args, code, _ in expected:
        done = await run(*args)
        assert done.returncode == code, (args, done.stdout, done.stderr)
    assert (await run("subscriptions", "list")).returncode == 0  # a read: not recorded

    printed = await run("audit", "--actor", "cli:*")
    assert printed.returncode == 0, printed.stderr
    records = [json.loads(line) for line in printed.stdout.splitlines()]
    actor = f"cli:{getpass.getuser()}"
    assert [(r["action"], r["target"], r["outcome"], r["code"]) for r in records] == [
        want for _, _, want in expected
    ]
    assert {(r["actor"], r["via"]) for r in records} == {(actor, "cli")}
    assert len({r["requestId"] for r in records}) == len(records)
    assert records[1]["details"]["result"] == "created"
    assert records[4]["details"]["state"] == "done" and records[4]["details"]["replay"]
    for record in records:
        assert datetime.fromisoformat(record["at"]).utcoffset() == timedelta(0)

    deletes = await run("audit", "--action", "subscription_delete", "--since", now.isoformat())
    assert [json.loads(line)["outcome"] for line in deletes.stdout.splitlines()] == [
        "ok",
        "refused",
    ]
    nobody = await run("audit", "--actor", "gemeente-0363")
    assert (nobody.returncode, nobody.stdout) == (0, "")


async def test_a_cli_action_whose_record_cannot_be_written_says_so(
    settings: Settings, tmp_path: Path
) -> None:
    config, good = _files(tmp_path)
    assert _cli(settings, config, "topics", "create").returncode == 0
    assert _cli(settings, config, "subscriptions", "add", str(good)).returncode == 0
    await limit_record_size(settings, Topics(settings.kafka.topic_prefix).audit, 100)
    done = await asyncio.to_thread(_cli, settings, config, "subscriptions", "remove", SUB)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "subscription_delete (ok) was not recorded" in done.stderr
    logged = [line for line in done.stderr.splitlines() if "audit record not written" in line]
    assert len(logged) == 1 and f'"target":"{SUB}"' in logged[0]  # restorable from the log
