"""Grants that bind, over HTTP on a real broker: what a subscriber may ask for, what it gets
when it asks for less, and what happens to its subscriptions when its grant goes.

The clients: gemeente-0363 may receive moves and deaths that involve 0363 only (required
filters), a few fields of a move and no volgindicaties; an afnemer may follow persons; beheer
is an operator; a publisher. The store reads with the same clients as the API, as in a
process of the bus.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaProducer, TopicPartition
from kafka_reading import consume

from streams.config import ClientConfig, Settings
from streams.contract import codec
from streams.contract.attributes import OVERLEDEN, VERHUISD, ZAAK_GEMUTEERD
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.http.api import make_api
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.topics import Topics
from streams.operations import subscription_set as subs
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

pytestmark = pytest.mark.kafka

TOKENS = {
    "gemeente-0363": "token-0363",
    "afnemer": "token-afnemer",
    "beheer": "token-beheer",
    "publisher": "token-publisher",
}
BSN = "999993653"
DEADLINE_S = 30.0
FIELDS = ["soort", "vorigAdres.gemeentecode", "nieuwAdres.gemeentecode"]
INVOLVES_0363 = {"any": [{"exact": {"gemeentevan": "0363"}}, {"exact": {"gemeentenaar": "0363"}}]}


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


GEMEENTE = ClientConfig.model_validate(
    {
        "id": "gemeente-0363",
        "token_sha256": _sha(TOKENS["gemeente-0363"]),
        "subscribe": {
            "types": [VERHUISD, OVERLEDEN],
            "purpose": "bijhouden inwoners Amsterdam",
            "fields": {VERHUISD: FIELDS},
            "filters": {VERHUISD: [INVOLVES_0363], OVERLEDEN: [{"exact": {"gemeente": "0363"}}]},
        },
    }
)
OTHERS = (
    ClientConfig.model_validate(
        {
            "id": "afnemer",
            "token_sha256": _sha(TOKENS["afnemer"]),
            "subscribe": {"types": [VERHUISD], "volgindicaties": True},
        }
    ),
    ClientConfig(id="beheer", token_sha256=_sha(TOKENS["beheer"]), operator=True),
    ClientConfig.model_validate(
        {
            "id": "publisher",
            "token_sha256": _sha(TOKENS["publisher"]),
            "publish": {"types": ["*"], "sources": ["*"]},
        }
    ),
)


def auth(client: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[client]}"}


def granted(settings: Settings, *clients: ClientConfig) -> Settings:
    return settings.model_copy(update={"clients": (*clients, *OTHERS)})


@pytest.fixture
def bus(settings: Settings) -> Settings:
    return granted(settings, GEMEENTE)


@pytest.fixture
async def store(bus: Settings, bus_topics: Topics) -> AsyncIterator[SubscriptionStore]:
    store = SubscriptionStore(bus, name="grants-store")
    await store.start()
    async with asyncio.timeout(DEADLINE_S):
        await store.ready()
    yield store
    await store.stop()


@pytest.fixture
async def api(bus: Settings, store: SubscriptionStore) -> AsyncIterator[TestClient[Any, Any]]:
    producer: AIOKafkaProducer = make_producer(bus, "grants-api")
    await producer.start()
    app = make_api(bus, producer=producer, produce_timeout_s=10.0, store=store)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
            yield client
    finally:
        await producer.stop()


def kafka_body(**changes: Any) -> dict[str, Any]:
    return {"sink": "kafka", "protocol": "KAFKA", "types": [VERHUISD], **changes}


async def create(api: TestClient[Any, Any], client: str, **changes: Any) -> dict[str, Any]:
    answer = await api.post("/subscriptions", json=kafka_body(**changes), headers=auth(client))
    assert answer.status == 201, await answer.text()
    created: dict[str, Any] = await answer.json()
    return created


def move(seed: int, van: str, naar: str) -> dict[str, Any]:
    """A valid move from gemeente `van` to `naar` as structured-mode JSON (the bus derives
    the routing attributes from the data)."""
    event = codec.to_json(
        EventFactory(seed, today=dutch_today()).verhuisd(soort="INTERGEMEENTELIJK")
    )
    event["data"]["vorigAdres"]["gemeentecode"] = van
    event["data"]["nieuwAdres"]["gemeentecode"] = naar
    if van == naar:
        event["data"]["soort"] = "BINNENGEMEENTELIJK"
    for name in ("gemeentevan", "gemeentenaar"):
        event.pop(name, None)
    return event


async def publish(api: TestClient[Any, Any], *events: dict[str, Any]) -> None:
    answer = await api.post(
        "/events",
        json=list(events),
        headers={"Content-Type": "application/cloudevents-batch+json", **auth("publisher")},
    )
    assert answer.status == 202, await answer.text()


async def size(settings: Settings, topic: str) -> int:
    consumer = make_consumer(settings, "grants-size")
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.kafka.deliver_partitions)]
        return sum((await consumer.end_offsets(parts)).values())
    finally:
        await consumer.stop()


# -- 403s at intake ---------------------------------------------------------------------------


async def test_more_fields_than_granted_is_403_naming_them(api: TestClient[Any, Any]) -> None:
    """It used to be a 201: a subscriber chose its own fields, the BSN included."""
    for fields, named in ((["bsn", "soort"], "bsn"), (["nieuwAdres"], "nieuwAdres")):
        answer = await api.post(
            "/subscriptions", json=kafka_body(fields=fields), headers=auth("gemeente-0363")
        )
        problem = await answer.json()
        assert (answer.status, problem["code"]) == (403, "fields_not_granted")
        assert named in problem["message"] and "soort" not in problem["message"]
    listed = await api.get("/subscriptions", headers=auth("gemeente-0363"))
    assert await listed.json() == []  # nothing stored
    within = await create(api, "gemeente-0363", fields=["soort", "nieuwAdres.gemeentecode"])
    assert within["fields"] == ["soort", "nieuwAdres.gemeentecode"]


async def test_volgindicaties_without_the_grant_are_403(api: TestClient[Any, Any]) -> None:
    """It used to be a 204: any subscriber could follow any BSN."""
    created = await create(api, "gemeente-0363")
    one = f"/subscriptions/{created['id']}/volgindicaties/{BSN}"
    answer = await api.put(one, headers=auth("gemeente-0363"))
    assert (answer.status, (await answer.json())["code"]) == (403, "volgindicaties_not_granted")
    only = await api.post(
        "/subscriptions", json=kafka_body(volgindicatiesOnly=True), headers=auth("gemeente-0363")
    )
    assert (only.status, (await only.json())["code"]) == (403, "volgindicaties_not_granted")
    afnemer = await create(api, "afnemer", volgindicatiesOnly=True)
    followed = await api.put(
        f"/subscriptions/{afnemer['id']}/volgindicaties/{BSN}", headers=auth("afnemer")
    )
    assert followed.status == 204


async def test_an_operator_is_held_to_the_owners_grant(
    api: TestClient[Any, Any], bus: Settings, store: SubscriptionStore
) -> None:
    """It used to be a 200: an operator's PUT skipped the owner's binding on fields."""
    created = await create(api, "gemeente-0363")
    one = f"/subscriptions/{created['id']}"
    for change, code in (
        ({"fields": ["bsn"]}, "fields_not_granted"),
        ({"types": [VERHUISD, ZAAK_GEMUTEERD]}, "type_not_granted"),
        ({"volgindicatiesOnly": True}, "volgindicaties_not_granted"),
    ):
        answer = await api.put(one, json=kafka_body(**change), headers=auth("beheer"))
        assert (answer.status, (await answer.json())["code"]) == (403, code), change
    stray = Subscription(
        id="stray", sink="kafka", protocol="KAFKA", types=(VERHUISD,), owner="gone", purpose="x"
    )
    await store.put(stray)
    answer = await api.put("/subscriptions/stray", json=kafka_body(), headers=auth("beheer"))
    assert (answer.status, (await answer.json())["code"]) == (403, "owner_unknown")
    # the CLI (`subscriptions add`) holds the operator to it as well
    entry = {**kafka_body(fields=["bsn"]), "owner": "gemeente-0363"}
    with pytest.raises(subs.InvalidSubscriptions, match="fields_not_granted"):
        subs.prepare(bus, [entry], {}, need_id=False)


# -- what the grant binds ---------------------------------------------------------------------


async def test_the_grants_filter_and_fields_bind_a_subscription_that_sends_none(
    api: TestClient[Any, Any], bus: Settings
) -> None:
    """It used to deliver every move in the country, whole and with the BSN, to a
    subscription of gemeente-0363 without filters or fields."""
    created = await create(api, "gemeente-0363", types=[VERHUISD])
    await publish(api, move(1, "0344", "0344"), move(2, "0344", "0599"), move(3, "0344", "0363"))
    topic = Topics(bus.kafka.topic_prefix).deliver(created["id"])
    assert await size(bus, topic) == 1  # routed in the request: the 202 means it is written
    [record] = await consume(bus, topic, count=1)
    data = json.loads(record.value)["data"]
    assert set(data) == {"soort", "vorigAdres", "nieuwAdres"}  # the grant's fields, no bsn
    assert data["nieuwAdres"] == {"gemeentecode": "0363"}


# -- revocation -------------------------------------------------------------------------------


async def test_a_subscription_is_suspended_while_its_grant_is_gone_and_resumes(
    api: TestClient[Any, Any], bus: Settings, settings: Settings, store: SubscriptionStore
) -> None:
    """It used to keep receiving: routing never looked at the owner's grant again."""
    created = await create(api, "gemeente-0363", types=[VERHUISD, OVERLEDEN])
    sub_id, topic = created["id"], Topics(bus.kafka.topic_prefix).deliver(created["id"])
    without_overleden = GEMEENTE.model_copy(
        update={"subscribe": GEMEENTE.subscribe.model_copy(update={"types": (VERHUISD,)})}  # type: ignore[union-attr]
    )
    for config, code in (
        (granted(settings), "owner_unknown"),  # the client removed from the configuration
        (granted(settings, without_overleden), "type_not_granted"),
    ):
        store.regrant(config)
        answer = await api.get("/subscriptions", headers=auth("beheer"))
        [shown] = await answer.json()
        assert shown["status"] == "suspended"
        assert shown["suspension"]["code"] == code
        await publish(api, move(10, "0344", "0363"))
        assert await size(bus, topic) == 0  # nothing routed for it
    # a process started with the grant withdrawn suspends it from the start
    fresh = SubscriptionStore(granted(settings), name="grants-fresh")
    await fresh.start()
    try:
        await fresh.ready()
        found = fresh.get(sub_id)
        assert found is not None and found.suspension is not None
        assert found.suspension.code == "owner_unknown" and not found.active
    finally:
        await fresh.stop()
    store.regrant(bus)  # the grant is back
    shown = await (await api.get(f"/subscriptions/{sub_id}", headers=auth("gemeente-0363"))).json()
    assert shown["status"] == "active" and "suspension" not in shown
    await publish(api, move(11, "0363", "0599"))
    assert await size(bus, topic) == 1


async def test_intake_holds_to_the_grants_a_regrant_applied(
    api: TestClient[Any, Any], settings: Settings, store: SubscriptionStore
) -> None:
    """It used to be a 200: the API checked intake against the grants it was started with,
    while the store bound by the reloaded ones (SIGHUP, `streams.runner.reload_clients`)."""
    created = await create(api, "gemeente-0363", types=[VERHUISD, OVERLEDEN])
    one = f"/subscriptions/{created['id']}"
    without_overleden = GEMEENTE.model_copy(
        update={"subscribe": GEMEENTE.subscribe.model_copy(update={"types": (VERHUISD,)})}  # type: ignore[union-attr]
    )
    store.regrant(granted(settings, without_overleden))
    again = kafka_body(types=[VERHUISD, OVERLEDEN])
    answer = await api.put(one, json=again, headers=auth("beheer"))
    assert (answer.status, (await answer.json())["code"]) == (403, "type_not_granted")
    answer = await api.post("/subscriptions", json=again, headers=auth("gemeente-0363"))
    assert (answer.status, (await answer.json())["code"]) == (403, "type_not_granted")
