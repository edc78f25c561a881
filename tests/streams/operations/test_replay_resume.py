"""A replay survives its API process: SIGKILL it half way, start another, and the replay
finishes there from its last checkpoint, nothing lost, per key in order (real processes)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from clients import clients_env
from kafka_reading import transport_env
from keys import PSEUDONYM_KEY, SECRETS_KEY
from test_replay import publish, replayed, subscription

from streams.config import Settings
from streams.kafka.topics import Topics
from streams.routing.store import SubscriptionStore

pytestmark = pytest.mark.kafka

TOKEN = "beheer-token"
DEADLINE_S = 60.0
FINISHED = ("done", "failed")
BEARER = {"Authorization": f"Bearer {TOKEN}"}
OPERATOR = {
    "id": "beheer",
    "operator": True,
    "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
}


@asynccontextmanager
async def api_process(settings: Settings, log: Path) -> AsyncIterator[tuple[Any, str]]:
    """`gemeentebus run --role api` with slow replays and a 2 s lease; yields (process, URL)."""
    owners = clients_env(settings)
    env = {
        **os.environ,
        **transport_env(settings),
        "GEMEENTEBUS_MODE": "test",
        "GEMEENTEBUS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "GEMEENTEBUS_KAFKA__PARTITIONS": str(settings.kafka.partitions),
        "GEMEENTEBUS_SECURITY__PSEUDONYM_KEY": PSEUDONYM_KEY,
        "GEMEENTEBUS_SECURITY__SECRETS_KEY": SECRETS_KEY,
        "GEMEENTEBUS_HTTP__PORT": "0",
        "GEMEENTEBUS_REPLAY__RATE": "150",
        "GEMEENTEBUS_REPLAY__CHECKPOINT_EVERY": "25",
        "GEMEENTEBUS_REPLAY__LEASE_S": "2",
        # the operator, and the owners of the test's subscriptions (their grants bind replays)
        "GEMEENTEBUS_CLIENTS": json.dumps([OPERATOR, *json.loads(owners["GEMEENTEBUS_CLIENTS"])]),
    }
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streams.cli", "run", "--role", "api",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(DEADLINE_S):
            line = (await process.stdout.readline()).decode()
        assert " on http://" in line, f"the API did not start: {line!r}; see {log}"
        yield process, line.split(" on ")[1].split(";")[0]
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def replay_status(url: str, subscription_id: str, replay_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(headers=BEARER) as session,
        session.get(f"{url}/subscriptions/{subscription_id}/replays/{replay_id}") as answer,
    ):
        assert answer.status == 200, await answer.text()
        status: dict[str, Any] = await answer.json()
        return status


async def status_when(
    url: str, subscription_id: str, replay_id: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll a replay's status over HTTP until `check` holds (fails after the deadline)."""
    async with asyncio.timeout(DEADLINE_S):
        while not check(status := await replay_status(url, subscription_id, replay_id)):  # noqa: ASYNC110 - polling over HTTP
            await asyncio.sleep(0.1)
    return status


async def test_a_replay_whose_api_process_is_killed_finishes_in_the_next(
    settings: Settings, store: SubscriptionStore, bus_topics: Topics, read_topic: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    sub = await store.put(subscription("r1"))
    start = datetime.now(UTC) - timedelta(seconds=1)
    accepted = await publish(settings, bus_topics, 300, seed=9)
    log = tmp_path / "api.log"

    async with api_process(settings, log) as (first, url):
        async with (
            aiohttp.ClientSession(headers=BEARER) as session,
            session.post(
                f"{url}/subscriptions/{sub.id}/replays", json={"from": start.isoformat()}
            ) as answer,
        ):
            assert answer.status == 202, await answer.text()
            replay_id = (await answer.json())["id"]
        # half way: checkpoints written, not done
        status = await status_when(url, sub.id, replay_id, lambda s: s["written"] >= 100)
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert status["state"] == "running" and status["written"] < len(accepted)
    killed_owner = status.get("owner")

    async with api_process(settings, log) as (_, url):
        status = await status_when(url, sub.id, replay_id, lambda s: s["state"] in FINISHED)
        assert status["state"] == "done", status
    assert status.get("owner") != killed_owner  # the second process finished it

    records = await read_topic(bus_topics.deliver(sub.id), count=len(accepted))
    events = replayed(records, replay_id)
    assert {e["id"] for e in events} == {a.event.id for a in accepted}  # nothing lost
    position = {a.event.id: i for i, a in enumerate(accepted)}
    per_key: dict[tuple[str, bytes], list[int]] = defaultdict(list)
    seen: set[str] = set()
    for e in events:  # first occurrences per key in the order of the events topics
        if e["id"] not in seen:
            seen.add(e["id"])
            per_key[(e["type"], e["_key"])].append(position[e["id"]])
    assert all(seq == sorted(seq) for seq in per_key.values())


async def test_an_owner_paused_past_its_lease_hands_over_and_stops(
    settings: Settings, store: SubscriptionStore, bus_topics: Topics, read_topic: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    sub = await store.put(subscription("r2"))
    start = datetime.now(UTC) - timedelta(seconds=1)
    accepted = await publish(settings, bus_topics, 300, seed=10)
    log = tmp_path / "api.log"

    async with api_process(settings, log) as (first, url), api_process(settings, log) as (_, other):
        async with (
            aiohttp.ClientSession(headers=BEARER) as session,
            session.post(
                f"{url}/subscriptions/{sub.id}/replays", json={"from": start.isoformat()}
            ) as answer,
        ):
            assert answer.status == 202, await answer.text()
            replay_id = (await answer.json())["id"]
        status = await status_when(url, sub.id, replay_id, lambda s: s["written"] >= 50)
        paused_owner = status["owner"]
        first.send_signal(signal.SIGSTOP)  # alive, but silent past its lease
        try:
            status = await status_when(
                other, sub.id, replay_id, lambda s: s["owner"] != paused_owner
            )
        finally:
            first.send_signal(signal.SIGCONT)
        # the woken owner reads the claim and agrees; the other finishes the replay
        mine = await status_when(url, sub.id, replay_id, lambda s: s["owner"] != paused_owner)
        status = await status_when(other, sub.id, replay_id, lambda s: s["state"] in FINISHED)
        assert status["state"] == "done", status
        assert mine["owner"] == status["owner"] != paused_owner

    records = await read_topic(bus_topics.deliver(sub.id), count=len(accepted))
    events = replayed(records, replay_id)
    assert {e["id"] for e in events} == {a.event.id for a in accepted}  # nothing lost
    # the paused owner stopped once it woke: duplicates are one checkpoint's worth and the
    # few it wrote before reading the claim, not a second run of the rest
    duplicates = len(events) - len(accepted)
    print(f"{duplicates} duplicates")
    assert duplicates < 100, duplicates
