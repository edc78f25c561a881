"""The dispatcher on a real broker with real aiohttp receivers on 127.0.0.1: every event to
every subscriber, in per-key order, whatever the subscriber does.

The tests write the deliver topics themselves, the way the router does (structured mode),
so they do not depend on routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import statistics
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiokafka.structs import ConsumerRecord
from clients import OWNER
from standardwebhooks import Webhook

from connectors.dispatcher import Dispatcher
from connectors.webhook import WebhookSender
from streams.config import DeliverySettings, Settings
from streams.contract.headers import ATTEMPTS_HEADER, ERROR_HEADER
from streams.delivery.dlq import list_dead_letters, redrive
from streams.delivery.log import decode_attempt
from streams.kafka.clients import make_admin, make_consumer, make_producer
from streams.kafka.topics import Groups, Topics, partitions
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

pytestmark = pytest.mark.kafka

SOURCE = "urn:nld:oin:00000001823288444000:systeem:BRP-component"
VERHUISD = "nl.brp.persoon-verhuisd"
ZAAK = "nl.overheid.zaken.zaak-gemuteerd"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
DEADLINE_S = 45.0

Reader = Callable[..., Awaitable[list[ConsumerRecord]]]


@dataclass(frozen=True, slots=True)
class Request:
    at: float  # time.time() when it arrived
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


Answer = Callable[[dict[str, Any]], Awaitable[tuple[int, dict[str, str]]]]


async def ok(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
    return 200, {}


class Receiver:
    """A webhook receiver whose answers the test chooses; keeps every request it answered."""

    def __init__(self, answer: Answer = ok, port: int = 0) -> None:
        self.answer = answer
        self.requests: list[Request] = []
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def accepted(self) -> list[Request]:
        return [r for r in self.requests if 200 <= r.status < 300]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        status, headers = await self.answer(json.loads(body))
        self.requests.append(Request(time.time(), dict(request.headers), body, status))
        return web.Response(status=status, headers=headers)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pseudonym(n: int) -> bytes:
    return hashlib.sha256(f"person {n}".encode()).hexdigest().encode()


def record(seq: int, key: bytes, event_type: str = VERHUISD) -> tuple[list[Any], bytes]:
    """A deliver-topic record as the router writes it: headers and structured-mode JSON."""
    event = {
        "specversion": "1.0",
        "id": f"e{seq}",
        "source": SOURCE,
        "type": event_type,
        "time": "2025-03-01T10:00:00Z",
        "datacontenttype": "application/json",
        "data": {"seq": seq, "sentAt": time.time()},
    }
    headers = [
        ("content-type", b"application/cloudevents+json; charset=utf-8"),
        ("ce_id", f"e{seq}".encode()),
        ("ce_source", SOURCE.encode()),
        ("ce_type", event_type.encode()),
        ("ce_time", b"2025-03-01T10:00:00Z"),
    ]
    return headers, json.dumps(event).encode()


class Writer:
    """Writes deliver topics like the router: the key of the source record, in order."""

    def __init__(self, settings: Settings) -> None:
        self.topics = Topics(settings.kafka.topic_prefix)
        self.producer = make_producer(settings, "test-writer")

    async def write(
        self, sub_id: str, events: Iterable[tuple[int, bytes]], event_type: str = VERHUISD
    ) -> None:
        for seq, key in events:
            headers, value = record(seq, key, event_type)
            await self.producer.send(self.topics.deliver(sub_id), value, key=key, headers=headers)
        await self.producer.flush()


def subscription(sub_id: str, sink: str) -> Subscription:
    raw: dict[str, Any] = {
        "id": sub_id,
        "sink": sink,
        "protocol": "HTTP",
        "sinkCredential": {"accessToken": f"token-{sub_id}"},
        "types": [VERHUISD, ZAAK],
        "owner": OWNER,
        "purpose": f"purpose of {sub_id}",
        "callbackCheck": False,
    }
    return Subscription.model_validate({**raw, "signingSecret": SECRET})


async def until(condition: Callable[[], bool], within: float = DEADLINE_S) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - a tiny poll of what receivers record
            await asyncio.sleep(0.02)


def fast(**changes: float) -> DeliverySettings:
    base: dict[str, float] = {
        "connect_timeout_s": 1.0,
        "read_timeout_s": 2.0,
        "retry_window_s": 60.0,
        "initial_backoff_s": 0.05,
        "max_backoff_s": 0.5,
    }
    return DeliverySettings(**{**base, **changes})


@pytest.fixture
async def writer(settings: Settings) -> AsyncIterator[Writer]:
    out = Writer(settings)
    await out.producer.start()
    yield out
    await out.producer.stop()


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        await receiver.stop()


async def dispatcher_for(
    settings: Settings, store: SubscriptionStore, delivery: DeliverySettings
) -> Dispatcher:
    dispatcher = Dispatcher(settings.model_copy(update={"delivery": delivery}), store)
    await dispatcher.start()
    return dispatcher


def in_key_order(requests: Iterable[Request], key_of: Callable[[int], bytes]) -> bool:
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for r in requests:
        seq = r.event["data"]["seq"]
        per_key[key_of(seq)].append(seq)
    return all(seqs == sorted(seqs) for seqs in per_key.values())


def latency_ms(requests: Iterable[Request]) -> tuple[float, float]:
    values = sorted((r.at - r.event["data"]["sentAt"]) * 1000 for r in requests)
    p50 = statistics.median(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return p50, p99


# -- (a) many events, four receivers -------------------------------------------------------


async def test_every_receiver_gets_exactly_its_events_in_key_order_signed(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receivers: list[Receiver],
    read_topic: Reader,
) -> None:
    receivers.extend([await Receiver().start() for _ in range(4)])
    ids = [f"gemeente-{n}" for n in range(4)]
    for sub_id, receiver in zip(ids, receivers, strict=True):
        await store.put(subscription(sub_id, receiver.url))
    dispatcher = await dispatcher_for(settings, store, fast())
    try:

        def key_of(seq: int) -> bytes:
            return pseudonym(seq % 40)

        def type_of(seq: int) -> str:
            return ZAAK if seq % 40 >= 30 else VERHUISD

        expected = {
            sub_id: [i for i in range(5000) if i % 4 == n or i % 5 == 0]
            for n, sub_id in enumerate(ids)
        }
        for sub_id, seqs in expected.items():
            for event_type in (VERHUISD, ZAAK):
                chosen = [(i, key_of(i)) for i in seqs if type_of(i) == event_type]
                await writer.write(sub_id, chosen, event_type)
        total = sum(len(s) for s in expected.values())
        await until(lambda: sum(len(r.requests) for r in receivers) >= total, within=180)
    finally:
        await dispatcher.stop()

    for sub_id, receiver in zip(ids, receivers, strict=True):
        got = [r.event["data"]["seq"] for r in receiver.requests]
        assert sorted(got) == expected[sub_id]  # exactly its events, no duplicates
        assert in_key_order(receiver.requests, key_of)
        for r in receiver.requests:
            assert r.headers["Authorization"] == f"Bearer token-{sub_id}"
            assert r.headers["Content-Type"].startswith("application/cloudevents+json")
            assert Webhook(SECRET).verify(r.body, r.headers) == r.event
    assert dispatcher.totals()["delivered"] == total

    attempts = [
        decode_attempt(r.value) for r in await read_topic(bus_topics_of(settings), count=total)
    ]
    delivered = [a for a in attempts if a.outcome == "delivered"]
    assert len(delivered) == total
    for a in delivered:
        seq = int(a.event_id[1:])
        assert a.purpose == f"purpose of {a.subscription}"
        assert a.status == 200 and a.attempt == 1
        if type_of(seq) == VERHUISD:
            assert a.pseudonym == key_of(seq).decode()  # who received data about this person
        else:
            assert a.pseudonym is None


def bus_topics_of(settings: Settings) -> str:
    return Topics(settings.kafka.topic_prefix).deliveries


# -- (b) one receiver failing, another unaffected ------------------------------------------


async def test_a_failing_receiver_recovers_in_order_and_delays_no_other(
    settings: Settings, store: SubscriptionStore, writer: Writer, receivers: list[Receiver]
) -> None:
    outage_until = 0.0

    async def flaky(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
        return (500, {}) if time.time() < outage_until else (200, {})

    failing, steady = await Receiver(flaky).start(), await Receiver().start()
    receivers.extend([failing, steady])
    await store.put(subscription("failing", failing.url))
    await store.put(subscription("steady", steady.url))
    dispatcher = await dispatcher_for(settings, store, fast())

    def key_of(seq: int) -> bytes:
        return pseudonym(seq % 20)

    try:
        for batch in range(10):  # before: steady alone, paced
            await writer.write(
                "steady", [(i, key_of(i)) for i in range(batch * 20, batch * 20 + 20)]
            )
            await asyncio.sleep(0.05)
        await until(lambda: len(steady.accepted) >= 200)
        before = latency_ms(steady.accepted)

        outage_until = time.time() + 30.0
        for n, batch in enumerate(range(10, 30)):  # during the 30 s outage: spread over 28 s
            events = [(i, key_of(i)) for i in range(batch * 20, batch * 20 + 20)]
            await writer.write("failing", events)
            await writer.write("steady", events)
            await asyncio.sleep(max(0.0, outage_until - 30.0 + (n + 1) * 1.4 - time.time()))
        await until(lambda: len(steady.accepted) >= 600)
        during = latency_ms(r for r in steady.accepted if r.event["data"]["seq"] >= 200)
        await until(lambda: len(failing.accepted) >= 400)
    finally:
        await dispatcher.stop()

    print(
        f"\nsteady receiver latency, ms: before p50 {before[0]:.1f} p99 {before[1]:.1f}; "
        f"during the other's outage p50 {during[0]:.1f} p99 {during[1]:.1f}"
    )
    assert sorted(r.event["data"]["seq"] for r in failing.accepted) == list(range(200, 600))
    assert in_key_order(failing.accepted, key_of)
    assert sorted(r.event["data"]["seq"] for r in steady.accepted) == list(range(600))
    assert in_key_order(steady.accepted, key_of)
    assert any(r.status == 500 for r in failing.requests)
    assert dispatcher.counts["failing"]["retry"] > 0


# -- (c) 410 Gone ----------------------------------------------------------------------------


async def test_410_retires_the_subscription_and_nothing_more_is_posted(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receivers: list[Receiver],
    read_topic: Reader,
) -> None:
    async def gone(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
        return 410, {}

    leaving, staying = await Receiver(gone).start(), await Receiver().start()
    receivers.extend([leaving, staying])
    await store.put(subscription("leaving", leaving.url))
    await store.put(subscription("staying", staying.url))
    dispatcher = await dispatcher_for(settings, store, fast())
    try:
        key = pseudonym(1)
        await writer.write("leaving", [(i, key) for i in range(5)])
        async with asyncio.timeout(DEADLINE_S):
            retired = await store.wait_for("leaving", lambda s: s is not None and not s.active)
        assert retired is not None and retired.status == "retired"
        await until(lambda: "leaving" not in dispatcher.running)
        assert len(leaving.requests) == 1

        await writer.write("leaving", [(i, key) for i in range(5, 10)])
        await writer.write("staying", [(i, key) for i in range(5)])
        await until(lambda: len(staying.accepted) == 5)
    finally:
        await dispatcher.stop()
    assert len(leaving.requests) == 1  # nothing after the 410
    log = [decode_attempt(r.value) for r in await read_topic(bus_topics_of(settings), count=6)]
    assert [(a.subscription, a.event_id, a.status) for a in log if a.outcome == "retired"] == [
        ("leaving", "e0", 410)
    ]


# -- (d) down past the retry window: DLQ, then redrive ------------------------------------


async def test_past_the_retry_window_events_go_to_the_dlq_and_redrive_delivers_them(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receivers: list[Receiver],
    read_topic: Reader,
) -> None:
    port = free_port()  # nobody listens here yet
    receiver = Receiver(port=port)
    receivers.append(receiver)
    await store.put(subscription("down", receiver.url))
    delivery = fast(retry_window_s=1.5, initial_backoff_s=0.1, max_backoff_s=0.3)
    dispatcher = await dispatcher_for(settings, store, delivery)

    def key_of(seq: int) -> bytes:
        return pseudonym(seq % 10)

    try:
        await writer.write("down", [(i, key_of(i)) for i in range(30)])
        dead = await read_topic(Topics(settings.kafka.topic_prefix).dlq("down"), count=30)
        assert sorted(json.loads(r.value)["data"]["seq"] for r in dead) == list(range(30))
        for r in dead:
            headers = dict(r.headers)
            assert headers[ERROR_HEADER] == b"connect"
            assert int(headers[ATTEMPTS_HEADER]) >= 1
        per_key: dict[bytes, list[int]] = defaultdict(list)
        for r in dead:
            per_key[r.key].append(json.loads(r.value)["data"]["seq"])
        assert all(s == sorted(s) for s in per_key.values())  # the DLQ keeps key order
        letters = await list_dead_letters(settings, "down")
        assert len(letters) == 30 and {d.error for d in letters} == {"connect"}

        await receiver.start()  # the subscriber is back
        assert await redrive(settings, "down") == 30
        await until(lambda: len(receiver.accepted) >= 30)
        assert await redrive(settings, "down") == 0  # nothing twice
    finally:
        await dispatcher.stop()
    got = [r.event["data"]["seq"] for r in receiver.accepted]
    assert sorted(got) == list(range(30))
    assert in_key_order(receiver.accepted, key_of)
    assert dispatcher.counts["down"]["dead_lettered"] == 30


# -- (e) 429 Retry-After ---------------------------------------------------------------------


async def test_429_retry_after_is_honoured(
    settings: Settings, store: SubscriptionStore, writer: Writer, receivers: list[Receiver]
) -> None:
    answers = iter([(429, {"Retry-After": "1"}), (200, {})])

    async def busy_once(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
        return next(answers)

    receiver = await Receiver(busy_once).start()
    receivers.append(receiver)
    await store.put(subscription("busy", receiver.url))
    dispatcher = await dispatcher_for(settings, store, fast(initial_backoff_s=0.01))
    try:
        await writer.write("busy", [(0, pseudonym(0))])
        await until(lambda: len(receiver.accepted) == 1)
    finally:
        await dispatcher.stop()
    first, second = receiver.requests
    assert (first.status, second.status) == (429, 200)
    print(f"\nretry after 429 (Retry-After: 1) came {second.at - first.at:.3f} s later")
    assert second.at - first.at >= 1.0


# -- (f) a slow receiver ---------------------------------------------------------------------


async def test_a_receiver_taking_10_s_per_answer_delays_no_other(
    settings: Settings, store: SubscriptionStore, writer: Writer, receivers: list[Receiver]
) -> None:
    released = asyncio.Event()

    async def slow(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(released.wait(), timeout=10)
        return 200, {}

    sluggish, quick = await Receiver(slow).start(), await Receiver().start()
    receivers.extend([sluggish, quick])
    await store.put(subscription("sluggish", sluggish.url))
    await store.put(subscription("quick", quick.url))
    dispatcher = await dispatcher_for(settings, store, fast(read_timeout_s=15.0))
    try:
        events = [(i, pseudonym(i % 20)) for i in range(300)]
        await writer.write("sluggish", events)
        await writer.write("quick", events)
        await until(lambda: len(quick.accepted) == 300)
        p50, p99 = latency_ms(quick.accepted)
        print(f"\nquick receiver latency beside a 10 s receiver, ms: p50 {p50:.1f} p99 {p99:.1f}")
        assert sluggish.accepted == []  # it has not answered once yet
    finally:
        released.set()
        await dispatcher.stop(deadline_s=1.0)
    assert sorted(r.event["data"]["seq"] for r in quick.accepted) == list(range(300))


# -- (g) a restart: at least once ------------------------------------------------------------


async def test_a_restart_mid_stream_loses_nothing_and_keeps_key_order(
    settings: Settings, store: SubscriptionStore, writer: Writer, receivers: list[Receiver]
) -> None:
    async def a_little_slow(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
        await asyncio.sleep(0.002 * (event["data"]["seq"] % 7))
        return 200, {}

    receiver = await Receiver(a_little_slow).start()
    receivers.append(receiver)
    await store.put(subscription("restarted", receiver.url))

    def key_of(seq: int) -> bytes:
        return pseudonym(seq % 25)

    first = await dispatcher_for(settings, store, fast())
    try:
        await writer.write("restarted", [(i, key_of(i)) for i in range(600)])
        await until(lambda: len(receiver.accepted) >= 200)
    finally:
        await first.stop(deadline_s=0.05)  # stopped mid-stream: in-flight attempts cut short
    second = await dispatcher_for(settings, store, fast())
    try:
        await until(lambda: {r.event["data"]["seq"] for r in receiver.accepted} >= set(range(600)))
    finally:
        await second.stop()
    seqs = [r.event["data"]["seq"] for r in receiver.accepted]
    print(f"\nrestart: {len(seqs) - 600} events delivered twice (at-least-once)")
    firsts: dict[int, Request] = {}
    for r in receiver.accepted:
        firsts.setdefault(r.event["data"]["seq"], r)
    assert in_key_order(sorted(firsts.values(), key=lambda r: r.at), key_of)


# -- a bug while delivering ------------------------------------------------------------------


async def test_an_unexpected_error_retries_the_record_and_keeps_order(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receivers: list[Receiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = WebhookSender.send
    failures = iter([True])

    async def buggy_once(self: WebhookSender, *args: Any, **kwargs: Any) -> int:
        if next(failures, False):
            raise RuntimeError("a bug, not an answer of the subscriber")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(WebhookSender, "send", buggy_once)
    receiver = await Receiver().start()
    receivers.append(receiver)
    await store.put(subscription("buggy", receiver.url))
    dispatcher = await dispatcher_for(settings, store, fast())
    try:
        await writer.write("buggy", [(i, pseudonym(0)) for i in range(3)])
        await until(lambda: len(receiver.accepted) == 3)
    finally:
        await dispatcher.stop()
    assert [r.event["data"]["seq"] for r in receiver.accepted] == [0, 1, 2]


async def test_an_endpoint_that_is_down_gets_one_probe_per_backoff_step_then_everything(
    settings: Settings, store: SubscriptionStore, writer: Writer, receivers: list[Receiver]
) -> None:
    """Recovery follows the endpoint (`connectors.endpoints`): while it answers 503, the 200
    waiting events of 20 zaken cost one request per backoff step, not one per event; the
    first 200 lets every waiting lane go, each in its key's order."""
    down = True

    async def outage(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
        return (503, {}) if down else (200, {})

    receiver = await Receiver(outage).start()
    receivers.append(receiver)
    await store.put(subscription("outage", receiver.url))
    delivery = fast(initial_backoff_s=0.1, max_backoff_s=0.4, probe_max_interval_s=0.4)
    dispatcher = await dispatcher_for(settings, store, delivery)

    def key_of(seq: int) -> bytes:
        return pseudonym(seq % 20)

    try:
        await writer.write("outage", [(i, key_of(i)) for i in range(200)])
        await until(lambda: len(receiver.requests) >= 8)
        endpoint = dispatcher.endpoints.get(receiver.url)
        await until(lambda: endpoint.failing)
        probes_then = endpoint.probes
        # the outage goes on for 8 probes: 0.1, 0.2, 0.4, 0.4 ... s apart
        await until(lambda: endpoint.probes - probes_then >= 8, within=30)
        down = False
        refused = len(receiver.requests)
        probed = endpoint.probes - probes_then
        await until(lambda: len(receiver.accepted) >= 200, within=30)
    finally:
        await dispatcher.stop()
    print(f"\n503s while 200 events waited out an outage: {refused}, of them probes {probed}")
    # before it was found failing: the attempts in flight (8 at most); then only the probes
    assert refused <= 8 + probed + 1, refused  # one per event would be 200 or more
    assert sorted(r.event["data"]["seq"] for r in receiver.accepted) == list(range(200))
    assert in_key_order(receiver.accepted, key_of)


async def test_the_delivery_group_starts_where_a_subscriptions_own_courier_group_left_off(
    settings: Settings, store: SubscriptionStore, writer: Writer, receivers: list[Receiver]
) -> None:
    """An upgrade from one courier group per subscription: what the old group committed is
    not delivered again; what it had not, is."""
    receiver = await Receiver().start()
    receivers.append(receiver)
    await store.put(subscription("upgraded", receiver.url))
    await writer.write("upgraded", [(i, pseudonym(i % 5)) for i in range(30)])
    topic = writer.topics.deliver("upgraded")
    group = Groups(settings.kafka.topic_prefix)
    old = make_consumer(settings, "old-courier", group=group.deliver("upgraded"))
    await old.start()
    try:
        tps = sorted(await partitions(settings.kafka, [topic]))
        old.assign(tps)
        ends = await old.end_offsets(tps)
        # the old courier had delivered the first half of every partition, and committed it
        done = {tp: end // 2 for tp, end in ends.items()}
        await old.commit(done)
        await old.seek_to_beginning(*tps)
        left: set[int] = set()
        async with asyncio.timeout(30):
            while sum(ends.values()) > sum([await old.position(tp) for tp in tps]):
                for tp, records in (await old.getmany(timeout_ms=200)).items():
                    left |= {seq_at(r) for r in records if r.offset >= done[tp]}
    finally:
        await old.stop()
    dispatcher = await dispatcher_for(settings, store, fast())
    try:
        await until(lambda: len(receiver.accepted) >= len(left))
    finally:
        await dispatcher.stop()
    # exactly the records the old group had not committed, none of those it had
    assert {r.event["data"]["seq"] for r in receiver.accepted} == left
    admin = make_admin(settings.kafka)
    await admin.start()
    try:
        now = await admin.list_consumer_group_offsets(group.delivery)
    finally:
        await admin.close()
    assert {tp: o.offset for tp, o in now.items() if tp.topic == topic} == ends


def seq_at(record: ConsumerRecord[bytes, bytes]) -> int:
    seq: int = json.loads(record.value or b"{}")["data"]["seq"]
    return seq


async def test_a_subscription_added_while_others_deliver_redelivers_nothing(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receivers: list[Receiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new subscription changes the reader's topics: every partition is revoked and
    assigned again (eager rebalancing). What was delivered before is committed first, so
    the first subscriber gets nothing twice (before: its commit was lost with the change)."""
    monkeypatch.setattr("connectors.reader._COMMIT_EVERY_S", 3600.0)  # only the rebalance's
    first, second = await Receiver().start(), await Receiver().start()
    receivers.extend([first, second])
    await store.put(subscription("first", first.url))
    dispatcher = await dispatcher_for(settings, store, fast())
    try:
        await writer.write("first", [(i, pseudonym(i % 7)) for i in range(100)])
        await until(lambda: len(first.accepted) >= 100)
        await store.put(subscription("second", second.url))
        await until(lambda: "second" in dispatcher.running)
        await writer.write("second", [(i, pseudonym(i % 7)) for i in range(10)])
        await writer.write("first", [(i, pseudonym(i % 7)) for i in range(100, 110)])
        await until(lambda: len(second.accepted) >= 10 and len(first.accepted) >= 110)
    finally:
        await dispatcher.stop()
    seqs = [r.event["data"]["seq"] for r in first.accepted]
    assert sorted(seqs) == list(range(110))  # once each


async def test_an_idle_subscription_is_watched_not_fetched_and_its_next_events_arrive(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receivers: list[Receiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Partitions that bring nothing leave the consumer's fetches (a second consumer
    long-polls them): the first events after a quiet spell are still delivered, once each,
    in key order, and committed."""
    monkeypatch.setattr("connectors.reader._COOL_S", 0.5)
    monkeypatch.setattr("connectors.reader._SWEEP_S", 0.2)
    receiver = await Receiver().start()
    receivers.append(receiver)
    await store.put(subscription("quiet", receiver.url))
    dispatcher = await dispatcher_for(settings, store, fast())
    deliver = Topics(settings.kafka.topic_prefix).deliver("quiet")
    reader = dispatcher._reader
    try:
        await writer.write("quiet", [(i, pseudonym(i % 5)) for i in range(20)])
        await until(lambda: len(receiver.accepted) >= 20)

        def cool() -> bool:  # every partition paused in the consumer, none for back-pressure
            mine = {tp for tp in reader._consumer.assignment() if tp.topic == deliver}
            return (
                len(mine) == 3 and mine <= reader._consumer.paused() and not reader.paused(deliver)
            )

        await until(cool)
        await writer.write("quiet", [(i, pseudonym(i % 5)) for i in range(20, 60)])
        await until(lambda: len(receiver.accepted) >= 60)
    finally:
        await dispatcher.stop()
    seqs = [r.event["data"]["seq"] for r in receiver.accepted]
    assert sorted(seqs) == list(range(60))  # once each
    assert in_key_order(receiver.accepted, lambda seq: pseudonym(seq % 5))
    admin = make_admin(settings.kafka)
    await admin.start()
    try:
        now = await admin.list_consumer_group_offsets(Groups(settings.kafka.topic_prefix).delivery)
    finally:
        await admin.close()
    assert sum(o.offset for tp, o in now.items() if tp.topic == deliver) == 60


# -- revocation --------------------------------------------------------------------------------


async def test_nothing_is_delivered_while_the_owners_grant_is_gone_and_all_once_it_is_back(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receivers: list[Receiver],
) -> None:
    """It used to deliver on: the courier never looked at the owner's grant again."""
    control, revoked = (await Receiver().start(), await Receiver().start())
    receivers.extend([control, revoked])
    await store.put(subscription("control", control.url))
    owned = subscription("revoked", revoked.url).model_copy(update={"owner": "gemeente-0363"})
    await store.put(owned)
    without = tuple(c for c in settings.clients if c.id != "gemeente-0363")
    store.regrant(settings.model_copy(update={"clients": without}))  # the client is removed
    suspended = store.get("revoked")
    assert suspended is not None and suspended.suspension is not None
    assert suspended.suspension.code == "owner_unknown"
    dispatcher = await dispatcher_for(settings, store, fast())
    try:
        events = [(i, pseudonym(i)) for i in range(20)]
        await writer.write("revoked", events)  # routed before the grant went
        await writer.write("control", events)
        await until(lambda: len(control.accepted) == 20)
        assert revoked.requests == []  # no courier runs for it
        store.regrant(settings)
        await until(lambda: len(revoked.accepted) == 20)
        assert sorted(r.event["data"]["seq"] for r in revoked.accepted) == list(range(20))
    finally:
        await dispatcher.stop()
