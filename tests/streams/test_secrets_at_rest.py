"""Webhook secrets at rest, on the shared broker: what the subscriptions topic holds, what the
bus refuses to read from it, and `gemeentebus secrets rotate`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiokafka import TopicPartition
from kafka_reading import transport_env
from keys import PSEUDONYM_KEY, SECRETS_KEY
from pydantic import SecretStr
from standardwebhooks import Webhook

from streams.config import ClientConfig, Settings
from streams.contract import codec
from streams.contract.attributes import VERHUISD
from streams.demo.generators import EventFactory
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.topics import Topics
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription
from streams.runner import running_bus

pytestmark = pytest.mark.kafka

SUBSCRIBER, PUBLISHER = "gemeente-token-0363", "publisher-token-brp"
DEADLINE_S = 60.0


@dataclass
class Sink:
    """A webhook receiver on 127.0.0.1 that answers 200 and keeps what it got."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(status=200)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    receiver = Sink()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    receiver.url = str(server.make_url("/hook"))
    try:
        yield receiver
    finally:
        await server.close()


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def with_clients(settings: Settings) -> Settings:
    clients = (
        ClientConfig.model_validate(
            {
                "id": "gemeente-0363",
                "token_sha256": _sha(SUBSCRIBER),
                "subscribe": {"types": ["nl.brp.*"], "purpose": "basisregistratie"},
            }
        ),
        ClientConfig.model_validate(
            {
                "id": "brp",
                "token_sha256": _sha(PUBLISHER),
                "publish": {"types": ["*"], "sources": ["*"]},
            }
        ),
    )
    http = settings.http.model_copy(update={"port": 0})
    return settings.model_copy(update={"clients": clients, "http": http})


async def raw_subscription_records(settings: Settings) -> list[Any]:
    """Every record of the subscriptions topic, read by a plain consumer as anyone could."""
    topic = Topics(settings.kafka.topic_prefix).subscriptions
    consumer = make_consumer(settings, "raw-reader")
    await consumer.start()
    try:
        parts = [TopicPartition(topic, 0)]  # the subscriptions topic has one partition
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        records: list[Any] = []
        async with asyncio.timeout(DEADLINE_S):
            while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


def everything_in(records: list[Any]) -> bytes:
    """Keys, values and headers of the records, as one byte string to search."""
    return b"\n".join(
        b"".join([r.key or b"", r.value or b"", *(k.encode() + (v or b"") for k, v in r.headers)])
        for r in records
    )


async def until(condition: Any, within: float = DEADLINE_S) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling what a server task appends
            await asyncio.sleep(0.05)


async def test_the_topic_holds_no_webhook_secret_and_delivery_still_uses_them(
    settings: Settings, sink: Sink
) -> None:
    token = f"sink-token-{secrets.token_hex(12)}"
    settings = with_clients(settings)
    async with running_bus(settings) as bus, aiohttp.ClientSession() as http:
        created = await http.post(
            f"{bus.url}/subscriptions",
            json={
                "protocol": "HTTP",
                "sink": sink.url,
                "sinkCredential": {"credentialType": "ACCESSTOKEN", "accessToken": token},
                "types": [VERHUISD],
            },
            headers={"Authorization": f"Bearer {SUBSCRIBER}"},
        )
        assert created.status == 201, await created.text()
        answer = await created.json()
        signing_secret = answer["signingSecret"]
        assert signing_secret.startswith("whsec_")

        records = await raw_subscription_records(settings)
        assert any(r.key == answer["id"].encode() for r in records)
        dump = everything_in(records)
        key_material = base64.b64decode(signing_secret.removeprefix("whsec_"))
        for secret in (token.encode(), signing_secret.encode(), key_material, b"whsec_"):
            assert secret not in dump
        assert base64.b64encode(token.encode()) not in dump

        event = EventFactory(seed=7).verhuisd()
        published = await http.post(
            f"{bus.url}/events",
            data=json.dumps(codec.to_json(event)),
            headers={
                "Authorization": f"Bearer {PUBLISHER}",
                "Content-Type": codec.STRUCTURED_CONTENT_TYPE,
            },
        )
        assert published.status == 202, await published.text()
        await until(lambda: any(event.id.encode() in body for _, body in sink.received))

    delivered = [(h, b) for h, b in sink.received if event.id.encode() in b]
    headers, body = delivered[0]
    assert headers["Authorization"] == f"Bearer {token}"
    signed = {k.lower(): v for k, v in headers.items() if k.lower().startswith("webhook-")}
    assert Webhook(signing_secret).verify(body, signed)["id"] == event.id


def webhook(sub_id: str, token: str) -> Subscription:
    return Subscription.model_validate(
        {
            "id": sub_id,
            "sink": "https://gemeente.example/hook",
            "protocol": "HTTP",
            "sinkCredential": {"accessToken": token},
            "signingSecret": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
            "types": [VERHUISD],
            "owner": "gemeente-0363",
            "purpose": "basisregistratie",
        }
    )


async def write_raw(settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
    """Records written into the subscriptions topic past the API, as a vandal would."""
    producer = make_producer(settings, "vandal")
    await producer.start()
    try:
        for key, value in records:
            await (
                await producer.send(
                    Topics(settings.kafka.topic_prefix).subscriptions, value, key=key
                )
            )
    finally:
        await producer.stop()


async def test_a_clear_text_secret_written_past_the_api_is_refused_and_visible(
    settings: Settings, store: SubscriptionStore, caplog: pytest.LogCaptureFixture
) -> None:
    kept = await store.put(webhook("gemeente-0363-kept", "the-real-token"))
    forged = webhook(kept.id, "token-of-an-intruder").model_copy(
        update={"sink": "https://elders.example/steal"}
    )
    # what the bus wrote before sealing: token and signing secret in clear
    clear = forged.record_dict()
    newcomer = webhook("gemeente-0363-new", "another-clear-token").record_dict()
    with caplog.at_level(logging.ERROR, logger="streams.routing.store"):
        await write_raw(
            settings,
            [
                (kept.id.encode(), json.dumps(clear).encode()),
                (b"gemeente-0363-new", json.dumps(newcomer).encode()),
            ],
        )
        await store.sync()
    now = store.get(kept.id)
    assert now is not None and now.sink == kept.sink  # the previous state stays
    assert now.sink_credential is not None
    assert now.sink_credential.access_token.get_secret_value() == "the-real-token"
    assert store.get("gemeente-0363-new") is None
    assert store.refused == {kept.id: "clear_secret", "gemeente-0363-new": "clear_secret"}
    lines = [r.getMessage() for r in caplog.records if "refused the record" in r.getMessage()]
    assert len(lines) == 2
    assert kept.id in lines[0] and "clear_secret" in lines[0]
    for line in lines:
        for value in ("token-of-an-intruder", "another-clear-token", "whsec_", "elders"):
            assert value not in line


async def test_a_wrongly_sealed_or_moved_secret_is_refused_and_counted(
    settings: Settings, store: SubscriptionStore
) -> None:
    from streams.ingress.metrics import render
    from streams.routing.sealing import Keyring, new_key, seal_record

    def refused(reason: str) -> float:
        name = f'gemeentebus_subscription_records_refused_total{{reason="{reason}"}}'
        lines = [ln for ln in render().decode().splitlines() if ln.startswith(name)]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = {r: refused(r) for r in ("unknown_key", "not_verified")}
    one = await store.put(webhook("gemeente-0363-one", "token-one"))
    other = webhook("gemeente-0363-other", "token-other")
    stranger = Keyring(base64.b64decode(new_key()))
    right = store.keyring
    wrong = seal_record({**other.record_dict(), "sink": "https://elders.example/"}, stranger)
    # a sealed token of `one`, correct under the bus's key, moved into `other`'s record
    moved = seal_record(other.record_dict(), right)
    moved["sinkCredential"] = seal_record(one.record_dict(), right)["sinkCredential"]
    await write_raw(settings, [(other.id.encode(), json.dumps(wrong).encode())])
    await store.sync()
    assert store.get(other.id) is None
    assert store.refused == {other.id: "unknown_key"}
    await write_raw(settings, [(other.id.encode(), json.dumps(moved).encode())])
    await store.sync()
    assert store.get(other.id) is None and store.refused == {other.id: "not_verified"}
    assert refused("unknown_key") == before["unknown_key"] + 1
    assert refused("not_verified") == before["not_verified"] + 1
    # a correct record of it later is applied, and no longer listed as refused
    await store.put(other)
    assert store.get(other.id) is not None and store.refused == {}


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMEENTEBUS_")}
    return env | {
        **transport_env(settings),
        "GEMEENTEBUS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "GEMEENTEBUS_KAFKA__REPLICATION_FACTOR": "1",
        "GEMEENTEBUS_KAFKA__MIN_INSYNC_REPLICAS": "1",
        "GEMEENTEBUS_KAFKA__ALLOW_SINGLE_REPLICA": "true",
        "GEMEENTEBUS_KAFKA__ALLOW_PLAINTEXT": "true",  # unless the session broker is secured
        "GEMEENTEBUS_SECURITY__PSEUDONYM_KEY": PSEUDONYM_KEY,
        **extra,
    }


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def test_rotate_reseals_every_record_under_the_new_key(
    settings: Settings, store: SubscriptionStore
) -> None:
    from streams.routing.sealing import key_id, new_key

    old_kid = store.keyring.kid
    subs = [webhook(f"gemeente-0363-r{i}", f"rotated-token-{i}") for i in range(2)]
    for sub in subs:
        await store.put(sub)
    kafka_record = {**subs[0].record_dict(), "id": "kafka-r", "protocol": "KAFKA"}
    del kafka_record["sinkCredential"], kafka_record["signingSecret"]
    await store.put(Subscription.model_validate(kafka_record))  # no secret to seal
    legacy = webhook("gemeente-0363-legacy", "legacy-clear-token")  # from before sealing
    await write_raw(settings, [(legacy.id.encode(), json.dumps(legacy.record_dict()).encode())])

    fresh = new_key()
    new_kid = key_id(base64.b64decode(fresh))
    env = _env(
        settings,
        GEMEENTEBUS_SECURITY__SECRETS_KEY=fresh,
        GEMEENTEBUS_SECURITY__PREVIOUS_KEYS=json.dumps([SECRETS_KEY]),
    )
    result = await asyncio.to_thread(_cli, env, "secrets", "rotate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"4 subscriptions read; current key {new_kid}",
        f"resealed 3 (2 from key {old_kid}, 1 in clear text)",
        f"already under {new_kid}: 0",
        "without secrets: 1",
        "refused: 0",
    ]
    latest = {r.key: json.loads(r.value) for r in await raw_subscription_records(settings)}
    for sub in [*subs, legacy]:
        assert latest[sub.id.encode()]["signingSecret"]["kid"] == new_kid
        assert latest[sub.id.encode()]["sinkCredential"]["accessToken"]["kid"] == new_kid

    # the old key retired: a reader with the new key alone has every subscription
    retired = settings.model_copy(
        update={"security": settings.security.model_copy(update={"secrets_key": SecretStr(fresh)})}
    )
    reader = SubscriptionStore(retired, name="after-rotation")
    await reader.start()
    try:
        await reader.ready()
        for sub in [*subs, legacy]:
            got = reader.get(sub.id)
            assert got is not None and got.record_dict() == sub.record_dict()
        assert reader.refused == {}  # older records were refused, their newer ones applied
    finally:
        await reader.stop()

    again = await asyncio.to_thread(_cli, env, "secrets", "rotate")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1:3] == ["resealed 0", f"already under {new_kid}: 3"]


@pytest.mark.parametrize("role", ["api", "delivery", "worker"])
def test_production_refuses_to_start_without_the_secrets_key(
    settings: Settings, tmp_path: Path, role: str
) -> None:
    # nothing answers on this port: the refusal must come before any Kafka client
    env = _env(settings, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9", GEMEENTEBUS_MODE="production")
    env["GEMEENTEBUS_KAFKA__START_TIMEOUT_S"] = "5"
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "run", "--role", role],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "GEMEENTEBUS_SECURITY__SECRETS_KEY" in result.stderr
    assert "security.secrets_key_file" in result.stderr
