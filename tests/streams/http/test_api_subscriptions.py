"""Subscriptions over HTTP: a real aiohttp server over a real broker, a real receiving sink."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaProducer

from connectors.kafka_local import free_port_range
from streams.config import ClientConfig, Settings
from streams.contract.attributes import OVERLEDEN, VERHUISD, ZAAK_GEMUTEERD, pseudonym
from streams.demo.generators import EventFactory
from streams.exceptions import TopicsRefused
from streams.http.api import make_api
from streams.http.subscriptions import CALLBACK_CHECK_TYPE
from streams.kafka.clients import make_producer
from streams.routing.store import SubscriptionStore

pytestmark = pytest.mark.kafka

TOKENS = {
    "gemeente": "gemeente-token-0363",
    "buur": "buur-token-0344",
    "beheer": "beheer-token-ops",
    "publisher": "publisher-token-1",
}
PURPOSE = "bijhouden basisregistratie personen"
BSN = "999993653"  # passes the elfproef
DEADLINE_S = 30.0


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def with_clients(settings: Settings) -> Settings:
    clients = (
        ClientConfig(
            id="gemeente-0363",
            token_sha256=_sha(TOKENS["gemeente"]),
            subscribe={"types": ["nl.brp.*"], "purpose": PURPOSE, "volgindicaties": True},  # type: ignore[arg-type]
        ),
        ClientConfig(
            id="gemeente-0344",
            token_sha256=_sha(TOKENS["buur"]),
            subscribe={"types": [VERHUISD]},  # type: ignore[arg-type]
        ),
        ClientConfig(id="beheer", token_sha256=_sha(TOKENS["beheer"]), operator=True),
        ClientConfig(
            id="publisher",
            token_sha256=_sha(TOKENS["publisher"]),
            publish={"types": ["*"], "sources": ["*"]},  # type: ignore[arg-type]
        ),
    )
    return settings.model_copy(update={"clients": clients})


def auth(client: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[client]}"}


@dataclass
class Sink:
    """A webhook receiver on 127.0.0.1 that answers `status` and keeps what it got."""

    url: str = ""
    status: int = 200
    received: list[tuple[dict[str, str], Any]] = field(default_factory=list)

    allowed_origin: str | None = None  # what it answers a webhook validation request
    validations: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.json()))
        return web.Response(status=self.status)

    async def validate(self, request: web.Request) -> web.Response:
        self.validations.append(dict(request.headers))
        allowed = {"WebHook-Allowed-Origin": self.allowed_origin} if self.allowed_origin else {}
        return web.Response(status=self.status, headers=allowed)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    receiver = Sink()
    app = web.Application()
    app.router.add_post("/events", receiver.handle)
    app.router.add_route("OPTIONS", "/events", receiver.validate)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    receiver.url = str(server.make_url("/events"))
    try:
        yield receiver
    finally:
        await server.close()


async def started(settings: Settings, name: str) -> SubscriptionStore:
    store = SubscriptionStore(settings, name=name)
    await store.start()
    async with asyncio.timeout(DEADLINE_S):
        await store.ready()
    return store


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[SubscriptionStore]:
    store = await started(settings, "api")
    try:
        yield store
    finally:
        await store.stop()


@pytest.fixture
async def api(settings: Settings, store: SubscriptionStore) -> AsyncIterator[TestClient[Any, Any]]:
    producer: AIOKafkaProducer = make_producer(settings, "api-test")
    await producer.start()
    app = make_api(with_clients(settings), producer=producer, store=store)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
            yield client
    finally:
        await producer.stop()


def body(receiver: Sink, /, **changes: Any) -> dict[str, Any]:
    moves = {"any": [{"exact": {"gemeentevan": "0363"}}, {"exact": {"gemeentenaar": "0363"}}]}
    return {
        "sink": receiver.url,
        "protocol": "HTTP",
        "sinkCredential": {"accessToken": "sink-token-abc"},
        "types": [VERHUISD],
        "filters": [moves],
        "subscriberReference": "zaaksysteem-1",
        **changes,
    }


async def create(api: TestClient[Any, Any], data: dict[str, Any], client: str = "gemeente") -> Any:
    response = await api.post("/subscriptions", json=data, headers=auth(client))
    assert response.status == 201, await response.text()
    return await response.json()


async def test_crud_round_trip(api: TestClient[Any, Any], sink: Sink) -> None:
    created = await create(api, body(sink))
    sub_id = created["id"]
    assert created["owner"] == "gemeente-0363"
    assert created["purpose"] == PURPOSE
    assert created["sinkCredential"]["accessToken"] == "********"
    assert created["status"] == "active"

    got = await api.get(f"/subscriptions/{sub_id}", headers=auth("gemeente"))
    assert got.status == 200
    assert {k: v for k, v in created.items() if k != "signingSecret"} == await got.json()

    # a GET answer, changed and PUT back: the masked token keeps the stored one
    changed = {**(await got.json()), "types": [VERHUISD, OVERLEDEN], "filters": []}
    put = await api.put(f"/subscriptions/{sub_id}", json=changed, headers=auth("gemeente"))
    assert put.status == 200, await put.text()
    replaced = await put.json()
    assert replaced["types"] == [VERHUISD, OVERLEDEN]
    assert (replaced["id"], replaced["owner"], replaced["created"]) == (
        sub_id,
        "gemeente-0363",
        created["created"],
    )
    # the callback check carried the stored token each time, and no personal data
    assert [h["Authorization"] for h, _ in sink.received] == ["Bearer sink-token-abc"] * 2
    assert {e["type"] for _, e in sink.received} == {CALLBACK_CHECK_TYPE}
    assert "bsn" not in json.dumps([e for _, e in sink.received])

    listed = await api.get("/subscriptions", headers=auth("gemeente"))
    assert [s["id"] for s in await listed.json()] == [sub_id]

    deleted = await api.delete(f"/subscriptions/{sub_id}", headers=auth("gemeente"))
    assert deleted.status == 204
    gone = await api.get(f"/subscriptions/{sub_id}", headers=auth("gemeente"))
    assert gone.status == 404
    assert await (await api.get("/subscriptions", headers=auth("gemeente"))).json() == []


async def test_signing_secret_is_answered_once(
    api: TestClient[Any, Any], sink: Sink, store: SubscriptionStore
) -> None:
    created = await create(api, body(sink))
    secret = created["signingSecret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    for path in (f"/subscriptions/{created['id']}", "/subscriptions"):
        response = await api.get(path, headers=auth("gemeente"))
        assert secret not in await response.text()
        assert "signingSecret" not in await response.text()
    put = await api.put(
        f"/subscriptions/{created['id']}", json=body(sink), headers=auth("gemeente")
    )
    assert "signingSecret" not in await put.text()
    # the deliverer finds it in the stored record, unchanged by the PUT
    stored = store.get(created["id"])
    assert stored is not None
    assert stored.record_dict()["signingSecret"] == secret


@pytest.mark.parametrize(
    ("changes", "path", "code"),
    [
        ({"filters": [{"regex": {"gemeentevan": "0363"}}]}, "filters[0]", "unknown_dialect"),
        ({"filters": [{"exact": {"postcode": "1012LG"}}]}, "filters[0].exact.postcode", None),
        ({"types": [VERHUISD, "nl.brp.bestaat-niet"]}, "types[1]", "unknown_type"),
        ({"filters": [], "fields": ["soort", "geheim"]}, "fields[1]", "unknown_field"),
        ({"sinkCredential": {"accessToken": ""}}, "sinkCredential.accessToken", None),
    ],
)
async def test_invalid_subscriptions_are_400_with_their_path(
    api: TestClient[Any, Any],
    sink: Sink,
    changes: dict[str, Any],
    path: str,
    code: str | None,
) -> None:
    response = await api.post(
        "/subscriptions", json=body(sink, **changes), headers=auth("gemeente")
    )
    assert response.status == 400
    answer = await response.json()
    assert answer["code"] == "invalid_subscription"
    assert [e["path"] for e in answer["errors"]] == [path]
    if code is not None:
        assert answer["errors"][0]["code"] == code
    text = json.dumps(answer)
    for value in ("regex", "bestaat-niet", "geheim", "1012LG"):
        assert value not in text  # no input value is echoed
    assert sink.received == []  # nothing was checked, nothing stored
    assert await (await api.get("/subscriptions", headers=auth("beheer"))).json() == []


async def test_type_outside_the_purpose_binding_is_403(
    api: TestClient[Any, Any], sink: Sink
) -> None:
    response = await api.post(
        "/subscriptions",
        json=body(sink, types=[VERHUISD, ZAAK_GEMUTEERD], filters=[]),
        headers=auth("gemeente"),
    )
    assert response.status == 403
    answer = await response.json()
    assert answer["code"] == "type_not_granted"
    assert ZAAK_GEMUTEERD in answer["message"]
    publisher = await api.post("/subscriptions", json=body(sink), headers=auth("publisher"))
    assert publisher.status == 403
    nobody = await api.get("/subscriptions", headers={"Authorization": "Bearer wrong"})
    assert nobody.status == 401


async def test_another_clients_subscription_is_403(api: TestClient[Any, Any], sink: Sink) -> None:
    created = await create(api, body(sink))
    one = f"/subscriptions/{created['id']}"
    buur = auth("buur")
    assert (await api.get(one, headers=buur)).status == 403
    assert (await api.put(one, json=body(sink), headers=buur)).status == 403
    assert (await api.delete(one, headers=buur)).status == 403
    assert (await api.put(f"{one}/volgindicaties/{BSN}", headers=buur)).status == 403
    assert await (await api.get("/subscriptions", headers=buur)).json() == []
    # the operator sees and may change everyone's
    operator = await api.get("/subscriptions", headers=auth("beheer"))
    assert [s["id"] for s in await operator.json()] == [created["id"]]
    assert (await api.get(one, headers=auth("beheer"))).status == 200
    assert (await api.get(one, headers=auth("gemeente"))).status == 200


async def test_volgindicatie_is_stored_as_pseudonym_only(
    api: TestClient[Any, Any], sink: Sink, store: SubscriptionStore, settings: Settings
) -> None:
    created = await create(api, body(sink, types=[VERHUISD, OVERLEDEN], filters=[]))
    one = f"/subscriptions/{created['id']}"
    put = await api.put(
        f"{one}/volgindicaties/{BSN}", json={"einddatum": "2031-12-31"}, headers=auth("gemeente")
    )
    assert put.status == 204
    assert BSN not in await put.text()
    key = pseudonym(BSN, settings.security.pseudonym_key_bytes())
    stored = store.get(created["id"])
    assert stored is not None
    record = json.dumps(stored.record_dict())
    assert BSN not in record
    assert stored.record_dict()["volgindicaties"] == {key: "2031-12-31"}
    for path in (one, "/subscriptions"):
        text = await (await api.get(path, headers=auth("gemeente"))).text()
        assert BSN not in text
        assert key not in text

    bad = await api.put(f"{one}/volgindicaties/123456789", headers=auth("gemeente"))
    assert bad.status == 400
    answer = await bad.json()
    assert answer["code"] == "invalid_bsn"
    assert "123456789" not in json.dumps(answer)

    removed = await api.delete(f"{one}/volgindicaties/{BSN}", headers=auth("gemeente"))
    assert removed.status == 204
    after = store.get(created["id"])
    assert after is not None
    assert after.volgindicaties == {}


async def test_callback_check(api: TestClient[Any, Any], sink: Sink) -> None:
    await create(api, body(sink))  # the sink answers 200
    sink.status = 500
    failed = await api.post("/subscriptions", json=body(sink), headers=auth("gemeente"))
    assert failed.status == 400
    answer = await failed.json()
    assert answer["code"] == "callback_check_failed"
    assert "500" not in json.dumps(answer)  # passed or failed, nothing more: no port scans
    assert len(await (await api.get("/subscriptions", headers=auth("gemeente"))).json()) == 1

    port = free_port_range(1)  # nothing listens there
    unreachable = f"http://127.0.0.1:{port}/events"
    refused = await api.post(
        "/subscriptions", json=body(sink, sink=unreachable), headers=auth("gemeente")
    )
    assert refused.status == 400
    assert (await refused.json())["message"] == answer["message"]  # the same as an HTTP 500
    agreed = body(sink, sink=unreachable, callbackCheck=False)
    created = await create(api, agreed)
    assert created["callbackCheck"] is False
    assert len(sink.received) == 2  # the skipped check sent nothing


async def test_the_cloudevents_webhook_handshake_instead_of_the_test_post(
    api: TestClient[Any, Any], sink: Sink
) -> None:
    handshake = body(sink, callbackCheck="handshake")
    failures = []
    for allowed, status in ((None, 200), ("elders.example", 200), ("gemeentebus", 403)):
        sink.allowed_origin, sink.status = allowed, status
        failed = await api.post("/subscriptions", json=handshake, headers=auth("gemeente"))
        assert failed.status == 400, allowed
        failures.append(await failed.json())
    assert all(f["code"] == "callback_check_failed" for f in failures)
    assert len({f["message"] for f in failures}) == 1  # failed, and nothing more
    assert len(await (await api.get("/subscriptions", headers=auth("gemeente"))).json()) == 0

    sink.status = 200
    for allowed in ("gemeentebus", "*"):  # the origin the bus sent, or anyone's
        sink.allowed_origin = allowed
        created = await create(api, handshake)
        assert created["callbackCheck"] == "handshake"
    assert sink.received == []  # no test event was POSTed
    asked = sink.validations[-1]
    assert asked["WebHook-Request-Origin"] == "gemeentebus"  # delivery.webhook_origin
    assert asked["Authorization"] == "Bearer sink-token-abc"


async def test_a_subscription_survives_a_restart(
    api: TestClient[Any, Any], sink: Sink, settings: Settings
) -> None:
    created = await create(api, body(sink))
    other = await started(settings, "after-restart")
    try:
        seen = other.get(created["id"])
        assert seen is not None
        expected = {k: v for k, v in created.items() if k != "signingSecret"}
        assert seen.public_dict() == expected
    finally:
        await other.stop()


async def test_a_410_retirement_shows_over_http_and_a_put_reactivates(
    api: TestClient[Any, Any], sink: Sink, store: SubscriptionStore, settings: Settings
) -> None:
    """The delivery role (its own store) retires the subscription after a 410; the API shows
    it retired, and the owner's PUT of it as active makes it active everywhere again."""
    created = await create(api, body(sink))
    sub_id, path = created["id"], f"/subscriptions/{created['id']}"
    delivery = await started(settings, "delivery")
    try:
        version = delivery.version(sub_id)
        assert version is not None
        await delivery.retire(sub_id, version)
        async with asyncio.timeout(DEADLINE_S):
            await store.wait_for(sub_id, lambda s: s is not None and not s.active)
        got = await (await api.get(path, headers=auth("gemeente"))).json()
        assert got["status"] == "retired"
        assert {k: v for k, v in got.items() if k != "status"} == {
            k: v for k, v in created.items() if k not in ("status", "signingSecret")
        }
        put = await api.put(path, json={**got, "status": "active"}, headers=auth("gemeente"))
        assert put.status == 200, await put.text()
        assert (await put.json())["status"] == "active"
        again = await (await api.get(path, headers=auth("gemeente"))).json()
        assert again["status"] == "active"
        async with asyncio.timeout(DEADLINE_S):
            back = await delivery.wait_for(sub_id, lambda s: s is not None and s.active)
        assert back is not None and sub_id in delivery.index
    finally:
        await delivery.stop()


async def test_two_api_processes_adding_volgindicaties_at_once_lose_none(
    api: TestClient[Any, Any], sink: Sink, store: SubscriptionStore, settings: Settings
) -> None:
    """Two API processes (each its own store and producer) follow 200 persons at once."""
    other_store = await started(settings, "api-2")
    producer: AIOKafkaProducer = make_producer(settings, "api-test-2")
    await producer.start()
    other_app = make_api(with_clients(settings), producer=producer, store=other_store)
    try:
        async with TestClient(TestServer(other_app, host="127.0.0.1", port=0)) as other:
            created = await create(
                api, body(sink, types=[VERHUISD, OVERLEDEN], filters=[], volgindicatiesOnly=True)
            )
            one = f"/subscriptions/{created['id']}"
            factory = EventFactory(3)
            bsns = sorted({factory.bsn() for _ in range(400)})[:200]
            assert len(bsns) == 200

            async def follow(client: TestClient[Any, Any], bsn: str, **extra: Any) -> None:
                put = await client.put(
                    f"{one}/volgindicaties/{bsn}", headers=auth("gemeente"), **extra
                )
                assert put.status == 204, await put.text()

            await asyncio.gather(*(follow(api if i % 2 else other, b) for i, b in enumerate(bsns)))
            key = settings.security.pseudonym_key_bytes()
            followed = {pseudonym(b, key) for b in bsns}
            fresh = await started(settings, "fresh")
            try:  # what any process reads from the topic: all 200
                assert set(fresh.get(created["id"]).volgindicaties) == followed  # type: ignore[union-attr]
            finally:
                await fresh.stop()
            for s in (store, other_store):
                await s.sync()
                assert set(s.get(created["id"]).volgindicaties) == followed  # type: ignore[union-attr]
            assert (await api.get(one, headers=auth("gemeente"))).status == 200

            # a replace keeps them; removing and an einddatum work from either process
            current = await (await other.get(one, headers=auth("gemeente"))).json()
            replaced = await other.put(
                one, json={**current, "subscriberReference": "v2"}, headers=auth("gemeente")
            )
            assert replaced.status == 200, await replaced.text()
            gone, ending = bsns[:50], bsns[50:100]
            await asyncio.gather(
                *(api.delete(f"{one}/volgindicaties/{b}", headers=auth("gemeente")) for b in gone),
                *(follow(other, b, json={"einddatum": "2031-12-31"}) for b in ending),
            )
            fresh = await started(settings, "fresh-2")
            try:
                final = fresh.get(created["id"])
                assert final is not None and final.subscriber_reference == "v2"
                assert set(final.volgindicaties) == followed - {pseudonym(b, key) for b in gone}
                assert {final.volgindicaties[pseudonym(b, key)] for b in ending} == {
                    date(2031, 12, 31)
                }
                # matching sees them: a followed person's move reaches the subscription, others not
                move = factory.verhuisd()
                for bsn, expected in ((bsns[150], True), (gone[0], False)):
                    person = pseudonym(bsn, key)
                    event = move.with_data({**move.data, "bsn": bsn})
                    matched = [s.id for s in fresh.index.match(event, person, date(2030, 1, 1))]
                    assert (created["id"] in matched) is expected
            finally:
                await fresh.stop()
    finally:
        await producer.stop()
        await other_store.stop()


async def test_topics_the_cluster_refuses_are_a_503_that_says_nothing_was_written(
    api: TestClient[Any, Any], sink: Sink, store: SubscriptionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refusing(*args: Any, **kwargs: Any) -> None:
        raise TopicsRefused({"gemeentebus.deliver.x": "INVALID_TOPIC_EXCEPTION"}, not_written=["x"])

    monkeypatch.setattr(store, "put", refusing)
    response = await api.post("/subscriptions", json=body(sink), headers=auth("gemeente"))
    assert response.status == 503, await response.text()
    problem = await response.json()
    assert problem["code"] == "topics_refused" and "nothing was written" in problem["message"]


@pytest.fixture
async def production_api(
    settings: Settings, store: SubscriptionStore
) -> AsyncIterator[TestClient[Any, Any]]:
    """The API as production runs it: the sink policy of production mode."""
    producer: AIOKafkaProducer = make_producer(settings, "api-test")
    await producer.start()
    app = make_api(
        with_clients(settings.model_copy(update={"mode": "production"})),
        producer=producer,
        store=store,
    )
    try:
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
            yield client
    finally:
        await producer.stop()


@pytest.mark.parametrize(
    ("sink_url", "rule"),
    [
        ("http://127.0.0.1:{port}/events", "https"),  # plain http
        ("https://127.0.0.1:{port}/events", "not public"),  # loopback
        ("https://[::ffff:127.0.0.1]:{port}/events", "not public"),  # its mapped form
        ("https://[::1]:{port}/events", "not public"),
        ("https://169.254.169.254/latest/meta-data", "not public"),  # cloud metadata
        ("https://10.0.0.1/hook", "not public"),
    ],
)
async def test_production_refuses_sinks_that_are_http_or_not_public(
    production_api: TestClient[Any, Any], sink: Sink, sink_url: str, rule: str
) -> None:
    port = sink.url.rsplit(":", 1)[1].split("/", 1)[0]
    for check in (True, False):  # callbackCheck false skips the probe, not the policy
        data = body(sink, sink=sink_url.format(port=port), callbackCheck=check)
        answer = await production_api.post("/subscriptions", json=data, headers=auth("gemeente"))
        assert answer.status == 400, await answer.text()
        problem = await answer.json()
        assert problem["code"] == "sink_not_allowed" and rule in problem["message"]
    assert sink.received == []  # not even a callback check went there


async def test_production_checks_a_name_where_it_connects_and_says_only_failed(
    production_api: TestClient[Any, Any], sink: Sink
) -> None:
    port = sink.url.rsplit(":", 1)[1].split("/", 1)[0]
    data = body(sink, sink=f"https://localhost:{port}/events")  # a name for loopback
    answer = await production_api.post("/subscriptions", json=data, headers=auth("gemeente"))
    assert answer.status == 400
    problem = await answer.json()
    assert problem["code"] == "callback_check_failed" and "localhost" not in json.dumps(problem)
    assert sink.received == []
