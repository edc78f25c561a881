"""Quotas and limits of the HTTP API (issue 17, item 5), on a real broker through the runner
the bus serves with (`GuardedRunner` over a TCP site on loopback): requests per second,
subscriptions per client, replays at once, filter depth and size, slow headers and bodies,
and that nothing refused leaves a topic behind."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from test_api_subscriptions import auth, with_clients

from streams.config import LimitsSettings, Settings
from streams.contract.attributes import OVERLEDEN, VERHUISD
from streams.contract.rules import dutch_today
from streams.delivery.log import EventRef, delivery_attempt, encode_attempt
from streams.demo.generators import EventFactory
from streams.http.api import make_api
from streams.http.limits import GuardedRunner, TokenBuckets
from streams.http.openapi import document
from streams.ingress.gate import Gate
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics, existing_topics
from streams.operations.logboek import delivery_page
from streams.routing.router import delivery_record
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

pytestmark = pytest.mark.kafka

DEADLINE_S = 30.0


def limited(settings: Settings, *, http: dict[str, Any] | None = None, **limits: Any) -> Settings:
    settings = with_clients(settings)
    return settings.model_copy(
        update={
            "limits": settings.limits.model_copy(update=limits),
            "http": settings.http.model_copy(update=http or {}),
        }
    )


@asynccontextmanager
async def serving(settings: Settings, store: SubscriptionStore) -> AsyncIterator[str]:
    """The API as `gemeentebus run` serves it, on a free loopback port: its base URL."""
    producer = make_producer(settings, "limits-test")
    await producer.start()
    runner = GuardedRunner(
        make_api(settings, producer=producer, store=store), settings=settings, access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await producer.stop()


async def call(
    method: str, url: str, who: str | None, **kwargs: Any
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    headers = auth(who) if who else kwargs.pop("headers", {})
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers, **kwargs) as response,
    ):
        body = await response.json() if response.status != 204 else None
        return response.status, body, response.headers


def kafka_body(**changes: Any) -> dict[str, Any]:
    return {"sink": "unused", "protocol": "KAFKA", "types": [VERHUISD], **changes}


# -- requests per second ----------------------------------------------------------------------


def test_a_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [None, None, None]
    assert buckets.take("a") == pytest.approx(0.5)  # one token takes 1/rate
    assert buckets.take("b") is None  # every client its own bucket
    now[0] = 100.0
    assert [buckets.take("a") for _ in range(4)][-1] is not None  # never over the burst


async def test_a_client_over_its_rate_gets_429_with_retry_after(
    settings: Settings, store: SubscriptionStore
) -> None:
    settings = limited(settings, requests_per_s=0.2, burst=3)
    async with serving(settings, store) as base:
        answers = [await call("GET", base + "/subscriptions", "gemeente") for _ in range(3)]
        assert [status for status, _, _ in answers] == [200, 200, 200]
        status, body, headers = await call("GET", base + "/subscriptions", "gemeente")
        assert (status, body["code"]) == (429, "rate_limited")
        assert headers["Retry-After"].isdigit() and 1 <= int(headers["Retry-After"]) <= 5
        # another client has its own bucket; a wrong token is a 401, never a 429
        assert (await call("GET", base + "/subscriptions", "buur"))[0] == 200
        status, body, _ = await call(
            "GET", base + "/subscriptions", None, headers={"Authorization": "Bearer nope"}
        )
        assert status == 401
        # health and the API description are for everyone, unlimited
        for _ in range(5):
            assert (await call("GET", base + "/health", None))[0] == 200


# -- subscriptions per client, and no topic for what is refused -----------------------------


async def topics_of(settings: Settings) -> set[str]:
    prefix = settings.kafka.topic_prefix + ".deliver."
    return {t for t in await existing_topics(settings.kafka) if t.startswith(prefix)}


async def test_a_client_holds_at_most_its_quota_of_subscriptions(
    settings: Settings, store: SubscriptionStore
) -> None:
    settings = limited(settings, subscriptions_per_client=2)
    # one made outside the API (the CLI) for the client counts against it too
    await store.put(
        Subscription.model_validate(
            {**kafka_body(), "id": "cli-made", "owner": "gemeente-0363", "purpose": "p"}
        )
    )
    async with serving(settings, store) as base:
        status, body, _ = await call("POST", base + "/subscriptions", "gemeente", json=kafka_body())
        assert status == 201, body
        before = await topics_of(settings)
        status, body, _ = await call("POST", base + "/subscriptions", "gemeente", json=kafka_body())
        assert (status, body["code"]) == (403, "subscription_quota_exceeded")
        assert await topics_of(settings) == before  # refused: no topic made
        # another client is not held to this one's count
        status, body, _ = await call("POST", base + "/subscriptions", "buur", json=kafka_body())
        assert status == 201, body
        # deleting one makes room again
        mine = [s for s in store if s.owner == "gemeente-0363"]
        assert (await call("DELETE", f"{base}/subscriptions/{mine[0].id}", "gemeente"))[0] == 204
        status, body, _ = await call("POST", base + "/subscriptions", "gemeente", json=kafka_body())
        assert status == 201, body


def nested(depth: int) -> dict[str, Any]:
    expression: dict[str, Any] = {"exact": {"gemeentevan": "0363"}}
    for _ in range(depth - 1):
        expression = {"not": expression}
    return expression


async def test_filters_too_deep_or_too_large_are_400_and_make_no_topic(
    settings: Settings, store: SubscriptionStore
) -> None:
    settings = limited(settings, filter_max_depth=8, filter_max_bytes=1024)
    async with serving(settings, store) as base:
        before = await topics_of(settings)
        for depth, code in ((300, "filter_too_deep"), (9, "filter_too_deep")):
            data = kafka_body(filters=[nested(depth)])
            status, body, _ = await call("POST", base + "/subscriptions", "gemeente", json=data)
            assert (status, body["code"]) == (400, code), (depth, body)
            assert body["errors"][0]["path"] == "filters"
        lists: Any = {"exact": {"gemeentevan": "0363"}}
        for _ in range(40):
            lists = [lists]
        status, body, _ = await call(
            "POST", base + "/subscriptions", "gemeente", json=kafka_body(filters=[lists])
        )
        assert (status, body["code"]) == (400, "filter_too_deep")
        wide = {"any": [{"exact": {"gemeentevan": f"{n:04}"}} for n in range(100)]}
        status, body, _ = await call(
            "POST", base + "/subscriptions", "gemeente", json=kafka_body(filters=[wide])
        )
        assert (status, body["code"]) == (400, "filter_too_large")
        # invalid, or outside the grant: refused before any topic is made as well
        data = kafka_body(filters=[{"regex": {"gemeentevan": ".*"}}])
        status, body, _ = await call("POST", base + "/subscriptions", "gemeente", json=data)
        assert status == 400, body
        data = kafka_body(types=[OVERLEDEN])
        status, body, _ = await call("POST", base + "/subscriptions", "buur", json=data)
        assert status == 403, body
        assert await topics_of(settings) == before
        assert [s.id for s in store] == []
        # within the limits: made, with its topics
        data = kafka_body(filters=[nested(8)])
        status, body, _ = await call("POST", base + "/subscriptions", "gemeente", json=data)
        assert status == 201, body
        # a replace is held to the same limits
        one = f"{base}/subscriptions/{body['id']}"
        status, body, _ = await call("PUT", one, "gemeente", json=kafka_body(filters=[nested(50)]))
        assert (status, body["code"]) == (400, "filter_too_deep")


# -- replays at once ----------------------------------------------------------------------------


async def test_replays_at_once_are_bounded_per_client_and_in_all(
    settings: Settings, store: SubscriptionStore, bus_topics: Topics
) -> None:
    settings = limited(settings, replays_per_client=1, replays_total=2)
    # slow replays: each of these runs for the whole test
    settings = settings.model_copy(
        update={"replay": settings.replay.model_copy(update={"rate": 0.5})}
    )
    for sub_id, owner in (
        ("a1", "gemeente-0363"),
        ("a2", "gemeente-0363"),
        ("b1", "gemeente-0344"),
        ("c1", "beheer"),
    ):
        await store.put(
            Subscription.model_validate(
                {**kafka_body(types=[VERHUISD, OVERLEDEN]), "id": sub_id, "owner": owner,
                 "purpose": "p"}
            )
        )  # fmt: skip
    gate, producer = (
        Gate(bus_topics, settings.security.pseudonym_key_bytes()),
        make_producer(settings, "p"),
    )
    accepted = [gate.accept(e) for e in EventFactory(5, today=dutch_today()).mixed(40)]
    await producer.start()
    try:
        futures = [
            await producer.send(
                a.topic, a.record.value, key=a.record.key, headers=list(a.record.headers)
            )
            for a in accepted
            if a.event.type in (VERHUISD, OVERLEDEN)
        ]  # fmt: skip
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    window = {"from": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}
    async with serving(settings, store) as base:

        async def replay(sub_id: str) -> tuple[int, Any, Any]:
            return await call(
                "POST", f"{base}/subscriptions/{sub_id}/replays", "beheer", json=window
            )

        status, first, _ = await replay("a1")
        assert status == 202, first
        status, body, headers = await replay("a2")  # the same owner's second
        assert (status, body["code"]) == (429, "replay_limit")
        assert headers["Retry-After"].isdigit()
        status, second, _ = await replay("b1")  # another owner's first
        assert status == 202, second
        status, body, _ = await replay("c1")  # a third in all
        assert (status, body["code"]) == (429, "replay_limit")
        # both read (so stopping them at the end stops no reader while it connects)
        async with asyncio.timeout(DEADLINE_S):
            for sub_id, started in (("a1", first), ("b1", second)):
                while started["scanned"] < 1:
                    url = f"{base}/subscriptions/{sub_id}/replays/{started['id']}"
                    started = (await call("GET", url, "beheer"))[1]


# -- slow headers and bodies ----------------------------------------------------------------


def _read_until_closed(sock: socket.socket, within_s: float) -> tuple[bytes, float]:
    """What the server sent until it closed the connection, and when it did."""
    sock.settimeout(within_s)
    got, started = b"", time.monotonic()
    while True:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"still open after {within_s} s: {got!r}") from None
        if not chunk:
            return got, time.monotonic() - started
        got += chunk


async def _trickle(port: int, head: bytes, drip: bytes, timeout_s: float) -> tuple[bytes, float]:
    """Send `head`, then one byte of `drip` every 0.2 s; what came back and after how long."""

    def run() -> tuple[bytes, float]:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head)
            started = time.monotonic()
            sock.settimeout(0.2)
            got = b""
            for byte in drip:
                try:
                    sock.sendall(bytes([byte]))
                    chunk = sock.recv(4096)  # waits up to 0.2 s: the drip's pace
                    if not chunk:
                        return got, time.monotonic() - started
                    got += chunk
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    return got, time.monotonic() - started
            rest, _ = _read_until_closed(sock, timeout_s)
            return got + rest, time.monotonic() - started

    return await asyncio.to_thread(run)


async def test_slow_headers_and_slow_bodies_are_cut_off(
    settings: Settings, store: SubscriptionStore
) -> None:
    settings = limited(settings, http={"header_timeout_s": 1.0, "body_timeout_s": 1.5})
    async with serving(settings, store) as base:
        port = int(base.rpartition(":")[2])
        # headers one byte at a time: a 408 and closed within the header timeout
        head = b"GET /subscriptions HTTP/1.1\r\nHost: x\r\n"
        got, after = await _trickle(port, head, b"X-Slow: " + b"a" * 200, timeout_s=5)
        assert got.startswith(b"HTTP/1.1 408"), got
        assert b"header_timeout" in got and 0.9 <= after <= 3.0, after
        # a body one byte at a time: a 408 body_timeout within the body timeout
        token = auth("gemeente")["Authorization"]
        head = (
            b"POST /subscriptions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: " + token.encode() + b"\r\nContent-Length: 500\r\n\r\n"
        )
        got, after = await _trickle(port, head, b" " * 500, timeout_s=5)
        assert got.startswith(b"HTTP/1.1 408"), got
        assert b"body_timeout" in got and 1.4 <= after <= 4.0, after
        # a request sent at once is served, and the connection kept for the next
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.get(base + "/subscriptions", headers=auth("gemeente")) as r:
                    assert r.status == 200 and json.loads(await r.read()) == []


# -- bounded reads behind /deliveries and /events?after= ---------------------------------------


async def put_kafka_subscription(store: SubscriptionStore, sub_id: str) -> None:
    await store.put(
        Subscription.model_validate(
            {**kafka_body(), "id": sub_id, "owner": "gemeente-0363", "purpose": "p"}
        )
    )


async def test_deliveries_are_read_in_bounded_pages_from_the_end(
    settings: Settings, store: SubscriptionStore, bus_topics: Topics
) -> None:
    settings = limited(settings, max_page=100, scan_max_records=400)
    await put_kafka_subscription(store, "mine")
    now = datetime.now(UTC)
    producer = make_producer(settings, "log-writer")
    await producer.start()
    try:  # 300 attempts of "mine" among 1,500 of 50 other subscriptions, interleaved
        futures = []
        for n in range(1800):
            sub = "mine" if n % 6 == 0 else f"other-{n % 50}"
            ref = EventRef(id=f"e{n}", source="s", type=VERHUISD, time=None, pseudonym=None,
                           replay=False)  # fmt: skip
            attempt = delivery_attempt(
                subscription=sub, purpose="p", ref=ref, outcome="delivered", attempt=1
            )
            attempt = dataclasses.replace(attempt, at=now + timedelta(milliseconds=n))
            key, value = encode_attempt(attempt)
            futures.append(await producer.send(bus_topics.deliveries, value, key=key))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    mine = [f"e{n}" for n in range(1800) if n % 6 == 0]

    # a page reads the subscription's own partition from its end, not the whole log
    page = await delivery_page(settings, "mine", limit=50)
    assert [a.event_id for a in page.attempts] == mine[-50:]
    assert page.before is not None and page.scanned < 1800

    async with serving(settings, store) as base:
        url = f"{base}/subscriptions/mine/deliveries"
        got: list[str] = []
        params = {"limit": "100"}
        async with asyncio.timeout(DEADLINE_S):
            while True:
                status, body, _ = await call("GET", url, "gemeente", params=params)
                assert status == 200, body
                assert len(body["deliveries"]) <= 100
                got = [d["event_id"] for d in body["deliveries"]] + got
                if body["next"] is None:
                    break
                params = {"limit": "100", "before": body["next"]}
        assert got == mine  # every one once, oldest first
        for bad in ({"limit": "101"}, {"limit": "0"}, {"before": "x"}):
            status, body, _ = await call("GET", url, "gemeente", params=bad)
            assert status == 400, (bad, body)


async def test_events_after_an_id_searches_a_bounded_tail(
    settings: Settings, store: SubscriptionStore, bus_topics: Topics
) -> None:
    settings = limited(settings, scan_max_records=30)
    await put_kafka_subscription(store, "pull")
    gate = Gate(bus_topics, settings.security.pseudonym_key_bytes())
    accepted = [gate.accept(e) for e in EventFactory(3, today=dutch_today()).mixed(150)]
    producer = make_producer(settings, "deliver-writer")
    await producer.start()
    try:
        topic = bus_topics.deliver("pull")
        futures = []
        for a in accepted:
            record = delivery_record(a.event, a.record.key)
            futures.append(
                await producer.send(
                    topic, record.value, key=record.key, headers=list(record.headers)
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    async with serving(settings, store) as base:
        url = f"{base}/subscriptions/pull/events"
        status, body, _ = await call("GET", url, "gemeente", params={"limit": "1000"})
        assert status == 200 and len(body["events"]) == 150
        order = [e["id"] for e in body["events"]]
        # a recent id is found; an old one is beyond the search and says so
        status, body, _ = await call("GET", url, "gemeente", params={"after": order[-3]})
        assert status == 200 and [e["id"] for e in body["events"]] == order[-2:]
        status, body, _ = await call("GET", url, "gemeente", params={"after": order[0]})
        assert (status, body["code"]) == (404, "unknown_event")
        assert "30" in body["message"]
        # a limit over the page size is refused, not cut
        status, body, _ = await call("GET", url, "gemeente", params={"limit": "1001"})
        assert (status, body["code"]) == (400, "invalid_limit")


def test_the_api_description_names_the_limits() -> None:
    doc = document()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters" or operation.get("security") == []:
                continue
            answer = operation["responses"]["429"]
            assert "Retry-After" in answer.get("headers", {}) or path == "/api/v1/notificaties"
    one = doc["paths"]["/subscriptions/{id}/deliveries"]["get"]
    assert {p["name"] for p in one["parameters"]} == {"limit", "before"}
    assert one["parameters"][0]["schema"]["maximum"] == LimitsSettings().max_page
    assert "408" in doc["paths"]["/subscriptions"]["post"]["responses"]
