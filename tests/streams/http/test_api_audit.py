"""Logboek Dataverwerkingen end to end: deliver a person's events, then ask who received them."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp
import pytest

from streams.config import ClientConfig, Settings
from streams.contract.attributes import VERHUISD
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.demo.receivers import Receiver
from streams.ingress.client import KafkaPublisher
from streams.runner import running_bus

pytestmark = pytest.mark.kafka

OPERATOR, SUBSCRIBER = "operator-token", "subscriber-token"


def _client(name: str, token: str, **grants: object) -> ClientConfig:
    digest = hashlib.sha256(token.encode()).hexdigest()
    return ClientConfig.model_validate({"id": name, "token_sha256": digest, **grants})


async def _subscribe(http: aiohttp.ClientSession, url: str, receiver: Receiver) -> dict[str, Any]:
    """Subscribe `receiver` as the subscriber client; it verifies with the returned secret."""
    body = {**receiver.subscription, "sink": receiver.url}
    headers = {"Authorization": f"Bearer {SUBSCRIBER}"}
    async with http.post(f"{url}/subscriptions", json=body, headers=headers) as r:
        created: dict[str, Any] = await r.json()
        assert r.status == 201, created
    receiver.secret = created["signingSecret"]
    return created


async def test_who_received_data_about_this_person(settings: Settings) -> None:
    settings = settings.model_copy(
        update={
            "http": settings.http.model_copy(update={"port": 0}),
            "clients": (
                _client("beheer", OPERATOR, operator=True),
                _client(
                    "gemeente-0363",
                    SUBSCRIBER,
                    subscribe={"types": [VERHUISD], "purpose": "bijhouden inwoners"},
                ),
            ),
        }
    )
    receiver = Receiver(
        name="gemeente-0363",
        token=SUBSCRIBER,
        subscription={"protocol": "HTTP", "types": [VERHUISD]},
    )
    await receiver.start()
    factory = EventFactory(3, today=dutch_today())
    events = [factory.verhuisd() for _ in range(5)]
    try:
        async with running_bus(settings) as bus, aiohttp.ClientSession() as http:
            created = await _subscribe(http, bus.url, receiver)
            async with KafkaPublisher(settings.kafka) as publisher:
                await publisher.publish(*events)
            async with asyncio.timeout(60):
                while receiver.total < len(events):  # noqa: ASYNC110 - polled by design
                    await asyncio.sleep(0.1)

            operator = {"Authorization": f"Bearer {OPERATOR}"}
            bsn = events[0].data["bsn"]
            about_person = {e.id for e in events if e.data["bsn"] == bsn}
            async with asyncio.timeout(30):
                while True:  # the delivery log is written just after the 2xx
                    async with http.post(
                        f"{bus.url}/audit/persons", json={"bsn": bsn}, headers=operator
                    ) as r:
                        assert r.status == 200
                        found = (await r.json())["deliveries"]
                    if len(found) >= len(about_person):
                        break
                    await asyncio.sleep(0.2)
            assert {(d["subscription"], d["purpose"], d["event_id"]) for d in found} == {
                (created["id"], "bijhouden inwoners", event_id) for event_id in about_person
            }
            assert bsn not in str(found)

            async with http.post(
                f"{bus.url}/audit/persons",
                json={"bsn": bsn},
                headers={"Authorization": f"Bearer {SUBSCRIBER}"},
            ) as r:
                assert r.status == 403
            async with http.post(
                f"{bus.url}/audit/persons", json={"bsn": "123456789"}, headers=operator
            ) as r:
                assert r.status == 400 and "123456789" not in await r.text()
            async with http.get(
                f"{bus.url}/subscriptions/{created['id']}/deliveries",
                headers={"Authorization": f"Bearer {SUBSCRIBER}"},
            ) as r:
                attempts = (await r.json())["deliveries"]
            assert {a["event_id"] for a in attempts if a["outcome"] == "delivered"} == {
                e.id for e in events
            }
    finally:
        await receiver.stop()


async def test_operator_lists_and_redrives_dead_letters(settings: Settings) -> None:
    settings = settings.model_copy(
        update={
            "http": settings.http.model_copy(update={"port": 0}),
            "delivery": settings.delivery.model_copy(
                update={"retry_window_s": 1.0, "initial_backoff_s": 0.1, "max_backoff_s": 0.2}
            ),
            "clients": (
                _client("beheer", OPERATOR, operator=True),
                _client("gemeente-0363", SUBSCRIBER, subscribe={"types": [VERHUISD]}),
            ),
        }
    )
    receiver = Receiver(
        name="gemeente-0363",
        token=SUBSCRIBER,
        fail_for_s=3600.0,
        subscription={"protocol": "HTTP", "types": [VERHUISD]},
    )
    await receiver.start()
    factory = EventFactory(4, today=dutch_today())
    events = [factory.verhuisd() for _ in range(6)]
    operator = {"Authorization": f"Bearer {OPERATOR}"}
    try:
        async with running_bus(settings) as bus, aiohttp.ClientSession() as http:
            created = await _subscribe(http, bus.url, receiver)
            async with KafkaPublisher(settings.kafka) as publisher:
                await publisher.publish(*events)
            dlq = f"{bus.url}/subscriptions/{created['id']}/dlq"
            async with asyncio.timeout(60):
                while True:
                    async with http.get(dlq, headers=operator) as r:
                        letters = (await r.json())["deadLetters"]
                    if len(letters) == len(events):
                        break
                    await asyncio.sleep(0.2)
            assert {d["event_id"] for d in letters} == {e.id for e in events}
            assert all(d["error"] == "http_503" for d in letters)
            assert receiver.total == 0

            receiver.fail_for_s = 0.0  # the subscriber is back
            receiver._failing_until = None
            async with http.post(
                f"{dlq}/redrive", headers={"Authorization": f"Bearer {SUBSCRIBER}"}
            ) as r:
                assert r.status == 403  # redrive is for operators
            async with http.post(f"{dlq}/redrive", headers=operator) as r:
                assert (await r.json()) == {"redriven": len(events)}
            async with asyncio.timeout(60):
                while receiver.total < len(events):  # noqa: ASYNC110 - polled by design
                    await asyncio.sleep(0.1)
            assert receiver.duplicates == 0
    finally:
        await receiver.stop()
