"""POST /events, /health and /metrics on a real aiohttp server over a real broker."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaProducer, TopicPartition
from clients import OWNER
from kafka_reading import consume
from prometheus_client.parser import text_string_to_metric_families

from streams.config import ClientConfig, HttpSettings, Settings
from streams.contract import codec
from streams.contract.attributes import VERHUISD, ZAAK_GEMUTEERD, partition_key
from streams.contract.headers import ERROR_HEADER
from streams.contract.record import KafkaRecord
from streams.contract.rules import dutch_today
from streams.demo.generators import BRP_SOURCE, EventFactory
from streams.http.api import make_api
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.topics import Topics
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

pytestmark = pytest.mark.kafka

TOKENS = {"brp": "brp-token-3f9a", "all": "all-token-77c1", "reader": "reader-token-01"}
STRUCTURED = {"Content-Type": "application/cloudevents+json"}
BATCH = {"Content-Type": "application/cloudevents-batch+json"}


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def with_clients(settings: Settings, **changes: Any) -> Settings:
    """The test's settings with three clients: a BRP publisher, an all-publisher, a reader."""
    clients = (
        ClientConfig(
            id="brp",
            token_sha256=_sha(TOKENS["brp"]),
            publish={"types": ["nl.brp.*"], "sources": [BRP_SOURCE]},  # type: ignore[arg-type]
        ),
        ClientConfig(
            id="all",
            token_sha256=_sha(TOKENS["all"]),
            publish={"types": ["*"], "sources": ["*"]},  # type: ignore[arg-type]
        ),
        ClientConfig(
            id="reader",
            token_sha256=_sha(TOKENS["reader"]),
            subscribe={"types": [VERHUISD]},  # type: ignore[arg-type]
        ),
    )
    return settings.model_copy(update={"clients": clients, **changes})


def auth(client: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[client]}"}


async def post(
    api: TestClient[Any, Any], body: Any, *, client: str = "brp", mode: dict[str, str] = STRUCTURED
) -> ClientResponse:
    """POST /events with `client`'s token; `body` as JSON unless it is bytes or text already."""
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return await api.post("/events", data=data, headers={**mode, **auth(client)})


@pytest.fixture
async def producer(settings: Settings, bus_topics: Topics) -> AsyncIterator[AIOKafkaProducer]:
    producer = make_producer(settings, "api-test")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@pytest.fixture
async def api(
    settings: Settings, producer: AIOKafkaProducer, store: SubscriptionStore
) -> AsyncIterator[TestClient[Any, Any]]:
    """A client of the API served on 127.0.0.1 by a real aiohttp server."""
    app = make_api(with_clients(settings), producer=producer, produce_timeout_s=10.0, store=store)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        yield client


async def topic_size(settings: Settings, topic: str) -> int:
    """How many records `topic` holds (sum of the end offsets of its partitions)."""
    consumer = make_consumer(settings, "test-offsets")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


def headers_of(record: Any) -> dict[str, str]:
    return {k: bytes(v).decode() for k, v in record.headers}


def events(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """`n` valid persoon-verhuisd events as structured-mode JSON."""
    factory = EventFactory(seed, today=dutch_today())
    return [codec.to_json(factory.verhuisd(soort="INTERGEMEENTELIJK")) for _ in range(n)]


def zaak_event(seed: int = 2) -> dict[str, Any]:
    return codec.to_json(EventFactory(seed, today=dutch_today()).zaak_gemuteerd())


def counts(text: str, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


# -- accepted -------------------------------------------------------------------------------


async def test_structured_event_is_accepted_and_lands_in_its_events_topic(
    api: TestClient[Any, Any], settings: Settings
) -> None:
    [event] = events(1)
    response = await post(api, event)
    assert response.status == 202, await response.text()
    assert await response.json() == {"ids": [event["id"]]}

    [record] = await consume(settings, Topics(settings.kafka.topic_prefix).events(VERHUISD), 1)
    headers = headers_of(record)
    key = settings.security.pseudonym_key_bytes()
    expected_key = partition_key(VERHUISD, {"bsn": event["data"]["bsn"]}, key)
    assert record.key == expected_key
    assert event["data"]["bsn"].encode() not in record.key
    assert headers["ce_id"] == event["id"]
    assert headers["ce_type"] == VERHUISD
    assert headers["ce_source"] == BRP_SOURCE
    assert headers["content-type"] == "application/avro"
    assert headers["ce_gemeentenaar"] == event["data"]["nieuwAdres"]["gemeentecode"]
    kafka = KafkaRecord(key=record.key, headers=tuple(record.headers), value=record.value)
    read = codec.from_kafka(kafka)
    assert codec.to_json(read)["data"] == event["data"]


async def test_batch_of_mixed_types_is_accepted_whole(
    api: TestClient[Any, Any], settings: Settings
) -> None:
    batch = [*events(3, seed=3), zaak_event()]
    response = await post(api, batch, client="all", mode=BATCH)
    assert response.status == 202, await response.text()
    assert (await response.json())["ids"] == [e["id"] for e in batch]

    topics = Topics(settings.kafka.topic_prefix)
    persons = await consume(settings, topics.events(VERHUISD), 3)
    assert sorted(headers_of(r)["ce_id"] for r in persons) == sorted(e["id"] for e in batch[:3])
    [zaak] = await consume(settings, topics.events(ZAAK_GEMUTEERD), 1)
    assert zaak.key == batch[3]["data"]["zaakUuid"].encode()
    assert headers_of(zaak)["ce_subject"] == batch[3]["data"]["zaakUuid"]


async def test_binary_mode_is_accepted(api: TestClient[Any, Any], settings: Settings) -> None:
    [event] = events(1, seed=4)
    data = event.pop("data")
    # the HTTP binding: every attribute a ce-* header, percent-encoded
    headers = {
        f"ce-{k}": quote(str(v), safe=":/") for k, v in event.items() if k != "datacontenttype"
    }
    headers["Content-Type"] = "application/json"
    response = await api.post("/events", data=json.dumps(data), headers={**headers, **auth("brp")})
    assert response.status == 202, await response.text()
    assert await response.json() == {"ids": [event["id"]]}
    [record] = await consume(settings, Topics(settings.kafka.topic_prefix).events(VERHUISD), 1)
    assert headers_of(record)["ce_id"] == event["id"]
    assert headers_of(record)["ce_time"] == event["time"]


# -- rejected -------------------------------------------------------------------------------


async def test_batch_with_one_bad_event_publishes_nothing_and_dead_letters_the_bad_one(
    api: TestClient[Any, Any], settings: Settings
) -> None:
    batch = events(3, seed=5)
    batch[1]["data"]["nieuwAdres"]["postcode"] = "0123 AB"
    response = await post(api, batch, mode=BATCH)
    assert response.status == 400
    body = await response.json()
    assert body["errors"] == [
        {
            "index": 1,
            "path": "data.nieuwAdres.postcode",
            "code": "postcode_format",
            "message": body["errors"][0]["message"],
        }
    ]
    assert "0123" not in json.dumps(body)  # the offending value is never echoed

    topics = Topics(settings.kafka.topic_prefix)
    [dead] = await consume(settings, topics.invalid, 1)
    headers = headers_of(dead)
    assert headers[ERROR_HEADER] == "postcode_format"
    assert headers["gemeentebus_via"] == "http"
    assert headers["content-type"] == "application/cloudevents+json"
    assert json.loads(dead.value) == batch[1]
    assert await topic_size(settings, topics.events(VERHUISD)) == 0


async def test_a_bsn_in_a_binary_mode_header_stays_out_of_the_invalid_topics_headers(
    api: TestClient[Any, Any], settings: Settings
) -> None:
    [event] = events(1, seed=8)
    data = event.pop("data")
    bsn = data["bsn"]
    headers = {
        f"ce-{k}": quote(str(v), safe=":/") for k, v in event.items() if k != "datacontenttype"
    }
    headers.update({"ce-subject": bsn, "ce-persoon": bsn, "Content-Type": "application/json"})
    response = await api.post("/events", data=json.dumps(data), headers={**headers, **auth("brp")})
    assert response.status == 400
    assert bsn not in await response.text()
    [dead] = await consume(settings, Topics(settings.kafka.topic_prefix).invalid, 1)
    found = headers_of(dead)
    assert found["ce_subject"] == found["ce_persoon"] == "redacted"
    assert found["ce_id"] == event["id"]  # what it claimed to be stays readable
    assert found["ce_type"] == VERHUISD
    assert found["gemeentebus_client"] == "brp"
    assert [k for k, v in dead.headers if bsn.encode() in bytes(v) or bsn in k] == []
    assert json.loads(dead.value) == data  # the input itself is kept as it came


async def test_three_broken_rules_give_three_errors(api: TestClient[Any, Any]) -> None:
    [event] = events(1, seed=6)
    bsn = event["data"]["bsn"]
    event["data"]["bsn"] = bsn[:8] + str((int(bsn[8]) + 1) % 10)
    event["data"]["nieuwAdres"]["postcode"] = "0123 AB"
    event["data"]["nieuwAdres"]["huisnummer"] = 0
    response = await post(api, event)
    assert response.status == 400
    errors = (await response.json())["errors"]
    assert sorted((e["index"], e["path"], e["code"]) for e in errors) == [
        (0, "data.bsn", "bsn_elfproef"),
        (0, "data.nieuwAdres.huisnummer", "huisnummer_range"),
        (0, "data.nieuwAdres.postcode", "postcode_format"),
    ]
    assert event["data"]["bsn"] not in await response.text()


async def test_undecodable_body_is_400_and_dead_lettered(
    api: TestClient[Any, Any], settings: Settings
) -> None:
    response = await post(api, b"{not json")
    assert response.status == 400
    assert [e["code"] for e in (await response.json())["errors"]] == ["invalid_json"]
    [dead] = await consume(settings, Topics(settings.kafka.topic_prefix).invalid, 1)
    assert dead.value == b"{not json"


# -- who may publish ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "missing_credentials"),
        ("Bearer not-a-known-token", "invalid_token"),
        ("Basic YnJwOmJycA==", "invalid_scheme"),
    ],
)
async def test_missing_or_wrong_credentials_are_401(
    api: TestClient[Any, Any], authorization: str | None, code: str
) -> None:
    headers = {**STRUCTURED, **({"Authorization": authorization} if authorization else {})}
    response = await api.post("/events", data=json.dumps(events(1)[0]), headers=headers)
    assert response.status == 401
    body = await response.json()
    assert body["code"] == code
    assert body["message"]
    assert "not-a-known-token" not in await response.text()


async def test_type_not_granted_is_403_naming_the_type(
    api: TestClient[Any, Any], settings: Settings
) -> None:
    response = await post(api, zaak_event())
    assert response.status == 403
    body = await response.json()
    assert body["code"] == "type_not_granted"
    assert ZAAK_GEMUTEERD in body["message"]
    assert body["errors"][0]["path"] == "type"


async def test_source_not_granted_is_403_naming_the_source(api: TestClient[Any, Any]) -> None:
    [event] = events(1, seed=7)
    event["source"] = "urn:nld:oin:00000001002220647000:systeem:Elders"
    response = await post(api, event)
    assert response.status == 403
    body = await response.json()
    assert body["code"] == "source_not_granted"
    assert event["source"] in body["message"]


async def test_a_grant_with_rsins_binds_the_bronorganisatie_of_zaak_events(
    settings: Settings, producer: AIOKafkaProducer, store: SubscriptionStore
) -> None:
    event = zaak_event()
    own = event["data"]["bronorganisatie"]
    other = "002220659" if own != "002220659" else "002220660"
    zaaksysteem = ClientConfig(
        id="zaaksysteem",
        token_sha256=_sha(TOKENS["all"]),
        publish={"types": ["nl.overheid.zaken.*"], "sources": ["*"], "rsins": [other]},  # type: ignore[arg-type]
    )
    app = make_api(with_clients(settings, clients=(zaaksysteem,)), producer=producer, store=store)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as api:
        response = await post(api, [event], client="all", mode=BATCH)
        assert response.status == 403, await response.text()
        body = await response.json()
        assert body["code"] == "bronorganisatie_not_granted"
        assert body["errors"][0]["path"] == "data.bronorganisatie"
    events_topic = Topics(settings.kafka.topic_prefix).events(ZAAK_GEMUTEERD)
    assert await topic_size(settings, events_topic) == 0


async def test_a_subscriber_may_not_publish(api: TestClient[Any, Any]) -> None:
    response = await post(api, events(1)[0], client="reader")
    assert response.status == 403
    assert (await response.json())["code"] == "not_a_publisher"


# -- limits and content types ---------------------------------------------------------------


async def test_event_over_64_kib_is_413(api: TestClient[Any, Any], settings: Settings) -> None:
    [event] = events(1, seed=8)
    event["padding"] = "x" * (64 * 1024)
    response = await post(api, event)
    assert response.status == 413
    assert (await response.json())["code"] == "payload_too_large"


async def test_batch_event_over_64_kib_is_413_naming_its_index(
    api: TestClient[Any, Any], settings: Settings
) -> None:
    batch = events(3, seed=9)
    batch[2]["padding"] = "x" * (64 * 1024)
    response = await post(api, batch, mode=BATCH)
    assert response.status == 413
    body = await response.json()
    assert [e["index"] for e in body["errors"]] == [2]
    assert await topic_size(settings, Topics(settings.kafka.topic_prefix).events(VERHUISD)) == 0


async def test_unknown_content_type_is_415(api: TestClient[Any, Any]) -> None:
    response = await post(api, "hello", mode={"Content-Type": "text/plain"})
    assert response.status == 415
    assert (await response.json())["code"] == "unsupported_media_type"


# -- broker down, health, metrics -----------------------------------------------------------


async def test_unconfirmed_publish_is_503_and_health_says_so(
    api: TestClient[Any, Any], producer: AIOKafkaProducer
) -> None:
    health = await api.get("/health")
    assert health.status == 200
    assert await health.json() == {"status": "ok"}

    await producer.stop()  # the broker can no longer confirm anything this API sends
    response = await post(api, events(1, seed=10)[0])
    assert response.status == 503
    body = await response.json()
    assert body["code"] == "kafka_unavailable"
    assert "ids" not in body
    assert (await api.get("/health")).status == 503


async def test_metrics_in_production_answer_only_the_metrics_token(
    settings: Settings, producer: AIOKafkaProducer, store: SubscriptionStore
) -> None:
    token = "metrics-token-5e1d"
    cases = (  # (http settings, Authorization, status)
        ({}, None, 401),  # production: no token set, so nobody
        ({"metrics_token": token}, None, 401),
        ({"metrics_token": token}, "Bearer metrics-token-5e1e", 401),
        ({"metrics_token": token}, f"Bearer {TOKENS['all']}", 401),  # a client's is not it
        ({"metrics_token": token}, f"bearer {token}", 200),
        ({"public_metrics": True}, None, 200),
    )
    for http, authorization, status in cases:
        production = with_clients(settings, mode="production", http=HttpSettings(**http))
        app = make_api(production, producer=producer, store=store)
        headers = {"Authorization": authorization} if authorization else {}
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as api:
            response = await api.get("/metrics", headers=headers)
            assert response.status == status, (http, authorization)
            if status == 401:
                assert (await response.json())["code"] == "metrics_token_required"
                assert token not in await response.text()
            else:
                assert "gemeentebus_events_accepted_total" in await response.text()


async def test_metrics_count_accepted_and_rejected(api: TestClient[Any, Any]) -> None:
    before = await (await api.get("/metrics")).text()
    batch = events(2, seed=11)
    assert (await post(api, batch, mode=BATCH)).status == 202
    broken = events(1, seed=12)[0]
    broken["data"]["nieuwAdres"]["postcode"] = "0123 AB"
    assert (await post(api, broken)).status == 400

    response = await api.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    after = await response.text()
    accepted = (("type", VERHUISD), ("via", "http"))
    rejected = (("code", "postcode_format"), ("type", VERHUISD), ("via", "http"))
    total = "gemeentebus_events_accepted_total"
    assert counts(after, total)[accepted] - counts(before, total).get(accepted, 0) == 2
    total = "gemeentebus_events_rejected_total"
    assert counts(after, total)[rejected] - counts(before, total).get(rejected, 0) == 1
    assert "gemeentebus_ingress_latency_seconds_count" in after


async def test_a_routing_failure_is_500_and_publishes_nothing(
    api: TestClient[Any, Any], settings: Settings, store: SubscriptionStore
) -> None:
    """It used to be a 202 with the event delivered to nobody (the router's catch-all)."""
    await store.put(
        Subscription.model_validate(
            {
                "id": "alles",
                "sink": "gemeentebus.deliver.alles",
                "protocol": "KAFKA",
                "types": [VERHUISD],
                "owner": OWNER,
                "purpose": "test",
            }
        )
    )
    sub = store.get("alles")
    assert sub is not None
    batch = events(3, seed=21)
    target = batch[1]["data"]["bsn"]

    def failing(data: dict[str, Any]) -> dict[str, Any]:
        if data["bsn"] == target:
            raise KeyError("a bug")
        return dict(data)

    sub._projections[VERHUISD] = failing
    response = await post(api, batch, mode=BATCH)
    assert response.status == 500, await response.text()
    assert (await response.json())["code"] == "routing_failed"
    topics = Topics(settings.kafka.topic_prefix)
    assert await topic_size(settings, topics.events(VERHUISD)) == 0
