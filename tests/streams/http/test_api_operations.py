"""Operations over HTTP against a real broker: who may replay and reconcile, replay progress,
and paging through a subscription's events with the pull endpoint."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from streams.auth import Authenticator
from streams.config import Settings
from streams.contract.attributes import OVERLEDEN, VERHUISD
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.http.kit import AUTHENTICATOR
from streams.http.operations import add_operation_routes
from streams.ingress.gate import Accepted, Gate
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics
from streams.routing.router import delivery_record
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

pytestmark = pytest.mark.kafka

KEY = b"test-pseudonym-key"
TOKENS = {"beheer": "op-token", "gemeente-0363": "sub-token", "gemeente-0344": "other-token"}
DEADLINE_S = 60.0


def bearer(client: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[client]}"}


@pytest.fixture
def op_settings(settings: Settings) -> Settings:
    clients = [
        {"id": name, "token_sha256": hashlib.sha256(token.encode()).hexdigest()}
        | (
            {"operator": True}
            if name == "beheer"
            else {"subscribe": {"types": [VERHUISD, OVERLEDEN]}}
        )
        for name, token in TOKENS.items()
    ]
    return settings.model_copy(update={"clients": Settings(clients=clients).clients})  # type: ignore[arg-type]


@pytest.fixture
async def api(
    op_settings: Settings, bus_topics: Topics
) -> AsyncIterator[tuple[str, SubscriptionStore, list[Accepted]]]:
    store = SubscriptionStore(op_settings, name="api-store")
    await store.start()
    await store.ready()
    sub = await store.put(
        Subscription(
            id="sub-0363", sink="x", protocol="KAFKA", types=(VERHUISD, OVERLEDEN),
            owner="gemeente-0363", purpose="bijhouding",
        )
    )  # fmt: skip
    gate, producer = Gate(bus_topics, KEY), make_producer(op_settings, "test-publisher")
    accepted = [gate.accept(e) for e in EventFactory(9, today=dutch_today()).mixed(120)]
    accepted = [a for a in accepted if a.event.type in sub.types]
    await producer.start()
    try:
        outputs = [(a.topic, a.record) for a in accepted]
        outputs += [
            (bus_topics.deliver(sub.id), delivery_record(a.event, a.record.key)) for a in accepted
        ]
        futures = [
            await producer.send(t, r.value, key=r.key, headers=list(r.headers)) for t, r in outputs
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    app = web.Application()
    app[AUTHENTICATOR] = Authenticator(op_settings)
    add_operation_routes(app, settings=op_settings, store=store)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", store, accepted
    await runner.cleanup()
    await store.stop()


async def call(method: str, url: str, who: str | None, **kwargs: Any) -> tuple[int, Any]:
    headers = bearer(who) if who else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers, **kwargs) as response,
    ):
        return response.status, await response.json()


async def test_who_may_replay_reconcile_and_pull(api: Any) -> None:
    base, _, _ = api
    one = f"{base}/subscriptions/sub-0363"
    window = {"from": "2020-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"}
    assert (await call("POST", one + "/replays", None, json=window))[0] == 401
    status, body = await call("POST", one + "/replays", "gemeente-0363", json=window)
    assert (status, body["code"]) == (403, "not_an_operator")  # the owner may not replay
    status, body = await call("GET", one + "/replays/x", "gemeente-0363")
    assert status == 403
    for method in ("GET", "POST"):
        status, body = await call(method, one + "/reconciliation", "gemeente-0344", params=window)
        assert (status, body["code"]) == (403, "not_the_owner")
    status, body = await call("GET", one + "/events", "gemeente-0344")
    assert (status, body["code"]) == (403, "not_the_owner")
    status, body = await call("GET", one + "/events", None)
    assert status == 401 and "Bearer" in body["message"]
    status, body = await call("POST", one + "/replays", "beheer", json={"types": ["x"]})
    assert (status, body["code"]) == (400, "invalid_replay")


async def test_operator_replays_and_follows_progress(api: Any) -> None:
    base, _, accepted = api
    one = f"{base}/subscriptions/sub-0363"
    start = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    status, body = await call("POST", one + "/replays", "beheer", json={"from": start})
    assert status == 202 and body["state"] in ("queued", "running", "done")
    async with asyncio.timeout(DEADLINE_S):
        while body["state"] != "done":
            status, body = await call("GET", f"{one}/replays/{body['id']}", "beheer")
            assert status == 200 and body["state"] != "failed"
    assert (body["scanned"], body["written"], body["etaSeconds"]) == (
        len(accepted),
        len(accepted),
        0.0,
    )
    window = {"from": start, "to": datetime.now(UTC).isoformat()}
    status, body = await call("GET", one + "/reconciliation", "gemeente-0363", params=window)
    assert status == 200 and body["published"]["count"] == len(accepted)
    assert body["delivered"]["count"] == 0  # nothing in the delivery log in this test
    held = {**window, "held": [accepted[0].event.id]}
    status, body = await call("POST", one + "/reconciliation", "gemeente-0363", json=held)
    assert status == 200 and body["held"]["count"] == 1


async def test_pull_pages_through_the_deliver_topic(api: Any) -> None:
    base, _, accepted = api
    url = f"{base}/subscriptions/sub-0363/events"
    pages: list[list[str]] = []
    after: str | None = None
    async with asyncio.timeout(DEADLINE_S):
        while True:
            params = {"limit": "25"} | ({"after": after} if after else {})
            status, body = await call("GET", url, "gemeente-0363", params=params)
            assert status == 200 and len(body["events"]) <= 25
            if not body["events"]:
                break
            pages.append([e["id"] for e in body["events"]])
            after = body["next"]
    got = [i for page in pages for i in page]
    assert sorted(got) == sorted(a.event.id for a in accepted)  # each once, none lost
    assert all(len(page) == 25 for page in pages[:-1])
    # after an event id: what follows it; after a time long ago: everything
    status, body = await call("GET", url, "beheer", params={"after": got[9], "limit": "5"})
    assert [e["id"] for e in body["events"]] == got[10:15]
    status, body = await call("GET", url, "beheer", params={"after": "2020-01-01T00:00:00Z"})
    assert len(body["events"]) == min(len(accepted), 100)
    status, body = await call("GET", url, "beheer", params={"after": "no-such-id"})
    assert status == 404
