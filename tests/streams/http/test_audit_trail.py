"""The audit trail over HTTP (issue 17, item 6): every change and operator action, refused ones
too, is one record in `<prefix>.audit` with actor, time, action, target, outcome and request id;
no BSN in any of them; while a record cannot be written, nothing more is done. Real broker, a
real API server, a real loopback sink."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from kafka_reading import consume, limit_record_size
from test_api_subscriptions import BSN, Sink, auth, body, started, with_clients

from streams.config import Settings
from streams.contract.attributes import VERHUISD, pseudonym
from streams.http.api import make_api
from streams.http.auditing import AUDITOR
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics
from streams.operations.audit import read_trail
from streams.routing.store import SubscriptionStore

pytestmark = pytest.mark.kafka

OTHER_BSN = "111222333"  # passes the elfproef too
NOT_A_BSN = "123456789"  # nine digits, fails it
DEADLINE_S = 30.0


@pytest.fixture
async def hook() -> AsyncIterator[Sink]:
    receiver = Sink()
    app = web.Application()
    app.router.add_post("/events", receiver.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    receiver.url = str(server.make_url("/events"))
    try:
        yield receiver
    finally:
        await server.close()


@pytest.fixture
async def subscriptions(settings: Settings, bus_topics: Topics) -> AsyncIterator[SubscriptionStore]:
    store = await started(settings, "audit-api")
    try:
        yield store
    finally:
        await store.stop()


@pytest.fixture
async def api(
    settings: Settings, subscriptions: SubscriptionStore
) -> AsyncIterator[TestClient[Any, Any]]:
    producer = make_producer(settings, "audit-test")
    await producer.start()
    app = make_api(with_clients(settings), producer=producer, store=subscriptions)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
            yield client
    finally:
        await producer.stop()


async def trail(settings: Settings, count: int) -> list[dict[str, Any]]:
    """The first `count` records of the audit topic, straight from Kafka."""
    records = await consume(settings, Topics(settings.kafka.topic_prefix).audit, count)
    return [json.loads(r.value) for r in records]


def brief(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["action"], r["actor"], r["outcome"], r["code"], r["status"]) for r in records]


async def test_every_change_and_operator_action_is_one_record_without_a_bsn(
    api: TestClient[Any, Any], hook: Sink, settings: Settings
) -> None:
    key = settings.security.pseudonym_key_bytes()
    created = await api.post(
        "/subscriptions", json=body(hook), headers={**auth("gemeente"), "X-Request-ID": "req-1"}
    )
    assert created.status == 201 and created.headers["X-Request-ID"] == "req-1"
    sub = (await created.json())["id"]
    one = f"/subscriptions/{sub}"
    now = datetime.now(UTC)
    window = {"from": (now - timedelta(minutes=5)).isoformat(), "to": now.isoformat()}
    calls: list[tuple[str, str, str, dict[str, Any] | None, int]] = [
        ("put", one, "buur", body(hook), 403),  # not the owner
        ("put", one, "gemeente", body(hook, subscriberReference="zaak-2"), 200),
        ("post", "/subscriptions", "publisher", body(hook), 403),  # no subscriber
        ("put", f"{one}/volgindicaties/{BSN}", "gemeente", None, 204),
        ("put", f"{one}/volgindicaties/{OTHER_BSN}", "buur", None, 403),
        ("put", f"{one}/volgindicaties/{NOT_A_BSN}", "gemeente", None, 400),
        ("delete", f"{one}/volgindicaties/{BSN}", "gemeente", None, 204),
        ("post", f"{one}/replays", "gemeente", window, 403),  # operators only
        ("post", f"{one}/replays", "beheer", window, 202),
        ("post", f"{one}/reconciliation", "gemeente", {**window, "held": []}, 200),
        ("post", f"{one}/dlq/redrive", "beheer", None, 200),
        ("post", "/audit/persons", "beheer", {"bsn": OTHER_BSN}, 200),
        ("post", "/audit/persons", "gemeente", {"bsn": BSN}, 403),
        ("delete", one, "gemeente", None, 204),
        ("post", "/subscriptions", "gemeente", {"types": [VERHUISD]}, 400),  # no sink
    ]
    request_ids = ["req-1"]
    for method, path, who, data, status in calls:
        answer = await api.request(method, path, json=data, headers=auth(who))
        assert answer.status == status, (method, path, who, await answer.text())
        request_ids.append(answer.headers["X-Request-ID"])
    # no token, a wrong token: nobody to name, nothing recorded
    assert (await api.delete(one)).status == 401
    assert (await api.post("/subscriptions", json={}, headers={"Authorization": "x"})).status == 401

    records = await trail(settings, len(calls) + 1)
    assert brief(records) == [
        ("subscription_create", "gemeente-0363", "ok", None, 201),
        ("subscription_update", "gemeente-0344", "refused", "not_the_owner", 403),
        ("subscription_update", "gemeente-0363", "ok", None, 200),
        ("subscription_create", "publisher", "refused", "not_a_subscriber", 403),
        ("volgindicatie_set", "gemeente-0363", "ok", None, 204),
        ("volgindicatie_set", "gemeente-0344", "refused", "not_the_owner", 403),
        ("volgindicatie_set", "gemeente-0363", "refused", "invalid_bsn", 400),
        ("volgindicatie_unset", "gemeente-0363", "ok", None, 204),
        ("replay", "gemeente-0363", "refused", "not_an_operator", 403),
        ("replay", "beheer", "ok", None, 202),
        ("reconcile", "gemeente-0363", "ok", None, 200),
        ("dlq_redrive", "beheer", "ok", None, 200),
        ("person_audit", "beheer", "ok", None, 200),
        ("person_audit", "gemeente-0363", "refused", "not_an_operator", 403),
        ("subscription_delete", "gemeente-0363", "ok", None, 204),
        ("subscription_create", "gemeente-0363", "refused", "invalid_subscription", 400),
    ]
    assert [r["requestId"] for r in records] == request_ids
    assert len(set(request_ids)) == len(request_ids)
    targets = [r["target"] for r in records]
    assert targets[0] == sub and targets[3] is None and targets[15] is None  # never made
    assert all(t == sub for i, t in enumerate(targets) if i not in (0, 3, 12, 13, 15))
    for record in records:
        at = datetime.fromisoformat(record["at"])
        assert at.utcoffset() == timedelta(0) and now - timedelta(minutes=1) < at
        assert record["via"] == "http"
    # a person by pseudonym alone, refused or not; never a BSN, valid or not
    persons = [r["details"].get("person") for r in records]
    assert persons[4] == pseudonym(BSN, key) == persons[7]
    assert persons[5] == pseudonym(OTHER_BSN, key) == persons[12]
    assert persons[6] is None  # not a BSN: not pseudonymised, not kept
    assert persons[13] is None  # refused before its body was read
    raw = json.dumps(records)
    for bsn in (BSN, OTHER_BSN, NOT_A_BSN):
        assert bsn not in raw
    replay = (await api.get(f"{one}/replays/x", headers=auth("beheer"))).status
    assert replay == 404  # the subscription is gone; reads are not recorded
    assert records[9]["details"]["replay"] and records[10]["details"]["consistent"] is True

    # GET /audit: operators read the trail, filtered
    got = await api.get("/audit", params={"actor": "gemeente-0344"}, headers=auth("beheer"))
    assert got.status == 200
    assert brief((await got.json())["records"]) == brief([records[1], records[5]])
    got = await api.get(
        "/audit", params={"action": "volgindicatie_*", "limit": "2"}, headers=auth("beheer")
    )
    assert [r["requestId"] for r in (await got.json())["records"]] == request_ids[4:6]
    later = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    got = await api.get("/audit", params={"since": later}, headers=auth("beheer"))
    assert (await got.json())["records"] == []
    assert (await api.get("/audit", headers=auth("gemeente"))).status == 403
    bad = await api.get("/audit", params={"since": "yesterday"}, headers=auth("beheer"))
    assert bad.status == 400


async def _actions(settings: Settings, count: int) -> list[dict[str, Any]]:
    """The first `count` audit records (probes skipped), polled until they are there."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            async with contextlib.aclosing(read_trail(settings)) as entries:
                found = [entry async for entry in entries]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.2)


async def test_while_a_record_cannot_be_written_nothing_more_is_done(
    api: TestClient[Any, Any], hook: Sink, settings: Settings, subscriptions: SubscriptionStore
) -> None:
    first = await api.post("/subscriptions", json=body(hook), headers=auth("gemeente"))
    second = await api.post("/subscriptions", json=body(hook), headers=auth("gemeente"))
    gone, kept = (await first.json())["id"], (await second.json())["id"]
    # the broker refuses every audit record now (a real refusal: too large for the topic)
    await limit_record_size(settings, Topics(settings.kafka.topic_prefix).audit, 100)
    auditor = api.app[AUDITOR]
    deleted = await api.delete(f"/subscriptions/{gone}", headers=auth("gemeente"))
    assert deleted.status == 204  # done before its record failed: kept, retried, logged
    assert auditor.pending == 1

    follow = await api.put(f"/subscriptions/{kept}/volgindicaties/{BSN}", headers=auth("gemeente"))
    assert follow.status == 503 and (await follow.json())["code"] == "audit_unavailable"
    assert subscriptions.get(kept).volgindicaties == {}  # type: ignore[union-attr]

    await limit_record_size(settings, Topics(settings.kafka.topic_prefix).audit, 1048588)
    async with asyncio.timeout(DEADLINE_S):
        while auditor.pending:  # noqa: ASYNC110 - the background retry, polled
            await asyncio.sleep(0.1)
    follow = await api.put(f"/subscriptions/{kept}/volgindicaties/{BSN}", headers=auth("gemeente"))
    assert follow.status == 204
    records = await _actions(settings, 4)
    assert [(r["action"], r["target"], r["outcome"]) for r in records] == [
        ("subscription_create", gone, "ok"),
        ("subscription_create", kept, "ok"),
        ("subscription_delete", gone, "ok"),  # once: the refused write left no copy
        ("volgindicatie_set", kept, "ok"),
    ]
