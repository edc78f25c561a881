"""The delivery scenario: publish→webhook latency through the whole running bus.

The bus runs as deployed, in its own processes (`gemeentebus run --role worker` and
`--role delivery`), with one HTTP subscription to every type, pointing at a real aiohttp
receiver in the bench's process on 127.0.0.1 that notes when each event arrives. Events
go into ingress at a fixed rate through an idempotent producer, as a publisher writes
them; the publish time of each is kept by event id, and latency is arrival − publish. The
baseline is raw Kafka at the same rate in the same run: an aiokafka producer into one topic,
an aiokafka consumer reading it, latency send → poll. Then a burst, as fast as the
publisher can, gives the bus's throughput to one fast receiver, against raw Kafka
(informational: the worker's validation bounds it). Delivery's own throughput: another burst
is routed while no delivery process runs, then one starts and delivers it from the deliver
topic, first to last receipt, against a bare aiohttp client posting the bodies that arrived
again, `connectors.attempts.CONCURRENCY` at a time (the bus processes stopped by then).

Targets: bus p99 ≤ 3 × raw p99 (ratio raw/bus ≥ 1/3); burst throughput ≥ 0.5 × the bare
client's.
"""

from __future__ import annotations

import asyncio
import gc
import json
import secrets
import statistics
import time
import uuid
from base64 import b64encode
from collections.abc import Awaitable, Callable
from typing import Final

import aiohttp
from aiohttp import web

from connectors.attempts import CONCURRENCY
from streams.bench.broker import (
    AIOKAFKA_WAIT_MS,
    BENCH_OWNER,
    Clock,
    delete_topics,
    namespace,
    partitions,
    watch,
)
from streams.bench.core import BenchContext, Figure
from streams.bench.workers import spawn, stop
from streams.config import Settings
from streams.contract import codec
from streams.contract.attributes import partition_key
from streams.contract.rules import dutch_today
from streams.contract.schemas import registry
from streams.demo.generators import EventFactory
from streams.demo.receivers import serve_hook
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.topics import Topics, TopicSpec, bus_topics, create_topics
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

__all__ = ["delivery_scenario", "paced", "percentiles", "until"]

_WARM_UP: Final = 30
_SUBSCRIPTION: Final = "bench-webhook"
_PUBLISHER_KEY: Final = b"bench"


class _Arrivals:
    """A webhook receiver on 127.0.0.1 that notes when each event id first arrived."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.bodies: list[bytes] = []  # kept while `keep`: what the bare client posts again
        self.keep = False
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner, self.url = await serve_hook(self._hook)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        event = json.loads(body)
        if event["id"] not in self.at:
            self.at[event["id"]] = time.time()
            if self.keep:
                self.bodies.append(body)
        return web.Response(status=204)


async def paced(n: int, rate: float, send: Callable[[int], Awaitable[None]]) -> None:
    """`send(i)` for i in 0..n-1 at `rate` per second (on schedule, never bunched later)."""
    began = time.perf_counter()
    for i in range(n):
        ahead = began + i / rate - time.perf_counter()
        if ahead > 0:
            await asyncio.sleep(ahead)
        await send(i)


async def until(arrived: Callable[[], int], n: int, within: float) -> None:
    async with asyncio.timeout(within):
        while arrived() < n:  # noqa: ASYNC110 - a poll: counting arrivals signals nothing
            await asyncio.sleep(0.02)


async def bare_post(url: str, bodies: list[bytes], concurrency: int) -> float:
    """Seconds a bare aiohttp client takes to POST `bodies` to `url`, `concurrency` at a
    time over as many connections: what delivery to one fast receiver could be."""
    queue = iter(bodies)
    headers = {"Content-Type": "application/cloudevents+json"}

    async def one(session: aiohttp.ClientSession) -> None:
        for body in queue:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                response.raise_for_status()

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(one(session))
        return time.perf_counter() - began


def percentiles(latencies: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


async def _raw(settings: Settings, n: int, rate: float | None) -> tuple[list[float], float]:
    """Raw Kafka produce→consume: (latencies in s, seconds from first send to last poll)."""
    topic = f"{settings.kafka.topic_prefix}.raw"
    await create_topics(settings.kafka, [TopicSpec(topic, settings.kafka.partitions)])
    records = [
        codec.to_kafka(e, key=None)
        for e in EventFactory(5, today=dutch_today()).mixed(min(n, 2000))
    ]
    sent: dict[bytes, float] = {}
    got: dict[bytes, float] = {}
    consumer = make_consumer(settings, "bench-raw", fetch_max_wait_ms=AIOKAFKA_WAIT_MS)
    producer = make_producer(settings, "bench-raw")
    await consumer.start()
    await producer.start()
    try:
        consumer.assign(partitions([topic], settings.kafka.partitions))
        await consumer.seek_to_beginning()

        async def read() -> None:
            while len(got) < n:
                for part in (await consumer.getmany(timeout_ms=100)).values():
                    now = time.time()
                    for record in part:
                        got.setdefault(record.key, now)

        async def send(i: int) -> None:
            key, record = str(i).encode(), records[i % len(records)]
            sent[key] = time.time()
            await producer.send(topic, record.value, key=key)

        reader = asyncio.create_task(read())
        began = time.perf_counter()
        if rate is None:
            for i in range(n):
                await send(i)
        else:
            await paced(n, rate, send)
        async with asyncio.timeout(60.0 + n / 100):
            await reader
        seconds = time.perf_counter() - began
    finally:
        await producer.stop()
        await consumer.stop()
    return [got[k] - sent[k] for k in sent], seconds


async def _bus(
    settings: Settings, n: int, burst: int, rate: float, progress: Callable[[str], None]
) -> tuple[list[float], float, float, float]:
    """Through the bus: (latencies at `rate` in s, seconds from publishing a burst of
    `burst` to its last receipt, seconds from the first to the last receipt of a burst
    routed before the delivery process started, seconds a bare aiohttp client takes to post
    those bodies at the same concurrency).

    The bus runs as it is deployed: a `gemeentebus run --role worker` process (validate and
    route) and a `--role delivery` process (webhooks). This process publishes, receives,
    and subscribes through the compacted subscriptions topic, as the API would.
    """
    receiver = _Arrivals()
    await receiver.start()
    factory = EventFactory(6, today=dutch_today())
    producer = make_producer(settings, "bench-publisher")
    store = SubscriptionStore(settings, name="bench-store")
    sent: dict[str, float] = {}
    processes: list[asyncio.subprocess.Process] = []
    try:
        await create_topics(settings.kafka, bus_topics(settings.kafka, registry().types()))
        await store.start()
        await store.ready()
        secret = "whsec_" + b64encode(secrets.token_bytes(24)).decode()
        await store.put(Subscription.model_validate(
            {"id": _SUBSCRIPTION, "sink": receiver.url, "protocol": "HTTP",
             "types": list(registry().types()), "owner": BENCH_OWNER, "purpose": "bench",
             "signingSecret": secret}
        ))  # fmt: skip
        processes = [*await spawn(settings, 1, "worker"), *await spawn(settings, 1, "delivery")]
        await producer.start()
        ingress = Topics(settings.kafka.topic_prefix).ingress

        async def send(_: int) -> None:
            (event,) = factory.mixed(1)
            record = codec.to_kafka(
                event, key=partition_key(event.type, event.data, _PUBLISHER_KEY)
            )
            sent[event.id] = time.time()
            await producer.send(ingress, record.value, key=record.key,
                                headers=list(record.headers))  # fmt: skip

        for i in range(_WARM_UP):  # joins groups and warms up before the clock counts
            await send(i)
        await until(lambda: len(receiver.at), _WARM_UP, 120.0)
        sent.clear()
        receiver.at.clear()
        # the bench's own full collections would count as bus latency: freeze what is built
        gc.collect()
        gc.freeze()
        await paced(n, rate, send)
        try:
            await until(lambda: len(receiver.at), n, 60.0 + n / 50)
        except TimeoutError:
            progress(f"  delivery: only {len(receiver.at)} of {n} arrived in time")
        latencies = [receiver.at[i] - sent[i] for i in sent if i in receiver.at]

        receiver.at.clear()
        began = time.perf_counter()
        for i in range(burst):
            await send(i)
        await until(lambda: len(receiver.at), burst, 120.0 + burst / 50)
        burst_s = time.perf_counter() - began

        # delivery alone: a burst routed while no delivery process runs, then delivered
        await stop(processes[1:])
        processes = processes[:1]
        receiver.at.clear()
        receiver.keep = True
        for i in range(burst):
            await send(i)
        deliver = partitions([Topics(settings.kafka.topic_prefix).deliver(_SUBSCRIPTION)],
                             settings.kafka.deliver_partitions)  # fmt: skip
        async with asyncio.timeout(120.0 + burst / 50):
            await watch(settings, deliver, _WARM_UP + n + 2 * burst, Clock(0.0))
        processes += await spawn(settings, 1, "delivery")
        await until(lambda: len(receiver.at), burst, 120.0 + burst / 50)
        backlog_s = max(receiver.at.values()) - min(receiver.at.values())
        await stop(processes)  # the bare client runs alone, as the bus did
        processes = []
        bare_s = await bare_post(receiver.url, receiver.bodies, CONCURRENCY)
        return latencies, burst_s, backlog_s, bare_s
    finally:
        gc.unfreeze()
        await stop(processes)
        await producer.stop()
        await store.stop()
        await receiver.stop()


async def delivery_scenario(ctx: BenchContext) -> list[Figure]:
    """Publish→webhook p50/p99 at a fixed rate and burst throughput, against raw Kafka."""
    assert ctx.bootstrap is not None
    rate, n = ctx.size.delivery_rate, int(ctx.size.delivery_rate * ctx.size.delivery_s)
    burst = ctx.size.delivery_burst
    settings = namespace(ctx.settings, ctx.bootstrap, "deliv", uuid.uuid4().hex[:8])
    http = settings.http.model_copy(update={"host": "127.0.0.1", "port": 0})
    settings = settings.model_copy(update={"http": http})
    try:
        raw_latencies, _ = await _raw(settings, n, rate)
        _, raw_burst_s = await _raw(
            settings.model_copy(update={"kafka": settings.kafka.model_copy(
                update={"topic_prefix": settings.kafka.topic_prefix + "-burst"})}),
            burst, None,
        )  # fmt: skip
        bus_latencies, bus_burst_s, backlog_s, bare_s = await _bus(
            settings, n, burst, rate, ctx.progress
        )
    finally:
        names = [s.name for s in bus_topics(settings.kafka, registry().types())]
        prefix = settings.kafka.topic_prefix
        t = Topics(prefix)  # the subscription's own topics too: the broker may be shared
        names += [t.deliver(_SUBSCRIPTION), t.dlq(_SUBSCRIPTION)]
        await delete_topics(settings, [*names, f"{prefix}.raw", f"{prefix}-burst.raw"])
    raw_p50, raw_p99 = percentiles(raw_latencies)
    bus_p50, bus_p99 = percentiles(bus_latencies)
    at = f"{rate}/s for {ctx.size.delivery_s:g} s"
    return [
        Figure.of(f"delivery: publish→webhook p50 vs raw Kafka produce→consume p50, {at}",
                  value=bus_p50, baseline=raw_p50, unit="ms", target=None,
                  higher_is_better=False),
        Figure.of(f"delivery: publish→webhook p99 vs raw Kafka p99, {at} (target bus ≤ 3× raw)",
                  value=bus_p99, baseline=raw_p99, unit="ms", target=1 / 3,
                  higher_is_better=False),
        Figure.of(f"delivery: burst of {burst} published to one fast receiver vs raw Kafka "
                  "produce→consume",
                  value=burst / bus_burst_s, baseline=burst / raw_burst_s, unit="events/s",
                  target=None),
        Figure.of(f"delivery from the deliver topic: {burst} routed events to one fast receiver "
                  f"vs a bare aiohttp client posting the same bodies, {CONCURRENCY} at a time "
                  "(target ≥ 0.5×)",
                  value=(burst - 1) / backlog_s if backlog_s > 0 else 0.0,
                  baseline=burst / bare_s, unit="events/s", target=0.5),
    ]  # fmt: skip
