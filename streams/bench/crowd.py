"""The crowd scenario: one active subscription beside thousands of idle ones, and a fan-out.

The bus runs as deployed (a `gemeentebus run --role worker` and a `--role delivery` process),
with one HTTP subscription to every type pointing at a receiver in the bench's process on
127.0.0.1 (`Hooks`). Idle subscriptions are added beside it in bulk (`put_many`, as
`subscriptions apply` does): HTTP subscriptions whose filter (an exact event id no event has)
matches nothing. After each step the bench waits until the delivery group has committed
every deliver topic (the reader commits a partition's start the moment it takes it), lets
the rebalance settle, then measures, over a fixed window with nothing published:

- the delivery process's CPU (cores: utime + stime from /proc over the window) and RSS;
- what it sends the broker: bytes and data segments per second over its sockets to the
  broker's port (`ss -ti`; a segment is about a request: Kafka requests this small fit in
  one, a fetch of thousands of partitions spans a few);
- the broker process's CPU, as a proxy for the requests it serves (the broker's
  RequestMetrics need JMX, which a running shared broker does not expose; on a shared
  broker every other client's load is in it too: informational).

Targets (issue 16): 2,000 idle subscriptions add under 0.05 cores and under 100 MB (the
figures compare the crowd's value to none's plus that budget, met at ratio ≥ 1), and the
active subscription's publish→webhook p50 and p99 beside them stay within 1.2× of those
with none (ratio ≥ 1/1.2). Then N subscriptions that match one event, each its own URL
path on the receiver: the time from publishing that event to its last receipt, against one
event to one subscription (the p50 beside the crowd), informational.

It creates 2 × (1 + N + M) topics of `kafka.deliver_partitions` / `dlq_partitions` each
(6,002 at full size), all deleted afterwards: a broker near its open-files limit (a shared
one full of other runs' topics) can fail under them; the bench's own broker (no
`KAFKA_BOOTSTRAP_SERVERS`) is the safe place for a full run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import shutil
import time
import uuid
from base64 import b64encode
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, Final

from aiohttp import web

from streams.bench.broker import BENCH_OWNER, delete_namespace, namespace
from streams.bench.core import BenchContext, Figure
from streams.bench.delivery import paced, percentiles, until
from streams.bench.workers import cpu_s, rss_mb, spawn, stop
from streams.config import Settings
from streams.contract import codec
from streams.contract.attributes import VERHUISD, partition_key
from streams.contract.envelope import CloudEvent
from streams.contract.rules import dutch_today
from streams.contract.schemas import registry
from streams.demo.generators import EventFactory
from streams.kafka.clients import make_admin, make_producer
from streams.kafka.topics import Groups, Topics, bus_topics, create_topics
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

__all__ = ["Bus", "Hooks", "crowd_scenario", "running_bus", "subscription"]

CPU_BUDGET: Final = 0.05  # cores 2,000 idle subscriptions may add (issue 16)
RSS_BUDGET_MB: Final = 100.0
LATENCY_FACTOR: Final = 1.2
_PUBLISHER_KEY: Final = b"bench"
_WARM_UP: Final = 30
_SETTLE_S: Final = 3.0  # after the group took every topic: the rebalance's own work is over
_SECRET: Final = "whsec_" + b64encode(secrets.token_bytes(24)).decode()


class Hooks:
    """A webhook receiver on 127.0.0.1 for any path: the first 2xx arrival of each event id
    and of each path; it answers `status` (a 5xx counts in `refused`, the event is not
    taken)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}  # event id -> first arrival
        self.paths: dict[str, float] = {}  # path -> first arrival
        self.status = 204
        self.refused = 0
        self.base = ""
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.status >= 300:
            self.refused += 1
            return web.Response(status=self.status)
        now = time.time()
        self.at.setdefault(json.loads(body)["id"], now)
        self.paths.setdefault(request.path, now)
        return web.Response(status=self.status)


def subscription(
    sid: str, sink: str, types: list[str], filters: list[dict[str, Any]] | None = None
) -> Subscription:
    """A signed HTTP subscription of the bench."""
    return Subscription.model_validate(
        {"id": sid, "sink": sink, "protocol": "HTTP", "types": types, "owner": BENCH_OWNER,
         "purpose": "bench", "signingSecret": _SECRET, "filters": filters or []}
    )  # fmt: skip


@dataclass
class Bus:
    """The bus in its own processes, and the bench's publisher and subscription store."""

    settings: Settings
    store: SubscriptionStore
    producer: Any
    worker: asyncio.subprocess.Process
    delivery: asyncio.subprocess.Process
    ids: list[str] = field(default_factory=list)

    async def put(self, subscriptions: list[Subscription]) -> None:
        await self.store.put_many(subscriptions)
        self.ids += [s.id for s in subscriptions]

    async def send(self, event: CloudEvent) -> float:
        """Publish `event` into ingress as a publisher does; the wall time it went."""
        record = codec.to_kafka(event, key=partition_key(event.type, event.data, _PUBLISHER_KEY))
        sent = time.time()
        await self.producer.send(
            Topics(self.settings.kafka.topic_prefix).ingress, record.value, key=record.key,
            headers=list(record.headers),
        )  # fmt: skip
        return sent

    async def reading(self, within: float) -> None:
        """Wait until the delivery group has taken the deliver topic of every subscription
        put, and the rebalance settled."""
        t, group = (
            Topics(self.settings.kafka.topic_prefix),
            Groups(self.settings.kafka.topic_prefix),
        )
        wanted = {t.deliver(i) for i in self.ids}
        admin = make_admin(self.settings, "bench-crowd")
        await admin.start()
        try:
            async with asyncio.timeout(within):
                while True:
                    have = await admin.list_consumer_group_offsets(group.delivery)
                    if wanted <= {tp.topic for tp in have}:
                        break
                    await asyncio.sleep(0.5)
        finally:
            await admin.close()
        await asyncio.sleep(_SETTLE_S)


@contextlib.asynccontextmanager
async def running_bus(settings: Settings, first: list[Subscription]) -> AsyncIterator[Bus]:
    """A worker and a delivery process on `settings`' topics with `first` subscribed;
    every process stopped and every topic of the namespace deleted afterwards."""
    specs = bus_topics(settings.kafka, registry().types())
    store = SubscriptionStore(settings, name="bench-store")
    producer = make_producer(settings, "bench-publisher")
    processes: list[asyncio.subprocess.Process] = []
    bus: Bus | None = None
    try:
        await create_topics(settings.kafka, specs)
        await store.start()
        await store.ready()
        processes = [*await spawn(settings, 1, "worker"), *await spawn(settings, 1, "delivery")]
        await producer.start()
        bus = Bus(settings, store, producer, processes[0], processes[1])
        await bus.put(first)
        yield bus
    finally:
        await stop(processes)
        await producer.stop()
        await store.stop()
        t = Topics(settings.kafka.topic_prefix)
        known = [s.name for s in specs]
        known += [n for i in (bus.ids if bus else []) for n in (t.deliver(i), t.dlq(i))]
        await delete_namespace(settings, known)


def bench_settings(ctx: BenchContext, role: str) -> Settings:
    """The run's namespace; the receivers listen on loopback."""
    assert ctx.bootstrap is not None
    settings = namespace(ctx.settings, ctx.bootstrap, role, uuid.uuid4().hex[:8])
    http = settings.http.model_copy(update={"host": "127.0.0.1", "port": 0})
    return settings.model_copy(update={"http": http})


async def warm_up(bus: Bus, hooks: Hooks, events: list[CloudEvent]) -> None:
    """`events` (each one a subscription takes) through the whole bus until they arrived:
    the groups are joined and the paths warm."""
    for event in events:
        await bus.send(event)
    await until(lambda: sum(1 for e in events if e.id in hooks.at), len(events), 180.0)


# -- what the delivery process costs ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Idle:
    """One window with nothing published."""

    cores: float
    rss_mb: float
    broker_cores: float
    bytes_s: float
    segments_s: float


def _ports(bootstrap: str) -> set[int]:
    return {int(a.rsplit(":", 1)[1]) for a in bootstrap.split(",") if ":" in a}


async def _ss(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "ss", "-Htn", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await process.communicate()
    return out.decode()


async def broker_pid(bootstrap: str) -> int | None:
    """The process listening on the bootstrap port (one local broker), if this host has it."""
    for line in (await _ss("-lp")).splitlines():
        local = line.split()[3] if len(line.split()) > 3 else ""
        if local.rsplit(":", 1)[-1] in {str(p) for p in _ports(bootstrap)}:
            found = re.search(r"pid=(\d+)", line)
            if found:
                return int(found.group(1))
    return None


async def to_broker(pid: int, bootstrap: str) -> tuple[float, float]:
    """(bytes, data segments) `pid` sent so far over its open sockets to the broker's port."""
    if shutil.which("ss") is None:
        raise RuntimeError("the crowd scenario reads socket counters with `ss` (iproute2)")
    ports = {str(p) for p in _ports(bootstrap)}
    sent = segments = 0.0
    head = ""
    for line in (await _ss("-ip")).splitlines():
        if not line.startswith(("\t", " ")):
            head = line
            continue
        parts = head.split()
        peer = parts[4].rsplit(":", 1)[-1] if len(parts) > 4 else ""
        if peer in ports and f"pid={pid}," in head:
            sent += float(_counter(line, "bytes_sent"))
            segments += float(_counter(line, "data_segs_out"))
    return sent, segments


def _counter(info: str, name: str) -> int:
    found = re.search(rf"\b{name}:(\d+)", info)
    return int(found.group(1)) if found else 0


async def idle_window(bus: Bus, seconds: float, broker: int | None) -> Idle:
    """The delivery process's CPU, RSS and traffic to the broker over `seconds` of nothing."""
    pid, bootstrap = bus.delivery.pid, bus.settings.kafka.bootstrap_servers
    cpu, brokers = cpu_s([pid]), cpu_s([broker]) if broker else 0.0
    sent, segments = await to_broker(pid, bootstrap)
    began = time.monotonic()
    await asyncio.sleep(seconds)
    spent = time.monotonic() - began
    sent2, segments2 = await to_broker(pid, bootstrap)
    return Idle(
        cores=(cpu_s([pid]) - cpu) / spent,
        rss_mb=rss_mb(pid),
        broker_cores=((cpu_s([broker]) if broker else 0.0) - brokers) / spent,
        bytes_s=(sent2 - sent) / spent,
        segments_s=(segments2 - segments) / spent,
    )


async def latencies(
    bus: Bus, hooks: Hooks, factory: EventFactory, n: int, rate: float
) -> list[float]:
    """Publish→webhook seconds of `n` events published at `rate`/s."""
    sent: dict[str, float] = {}

    async def send(_: int) -> None:
        (event,) = factory.mixed(1)
        sent[event.id] = await bus.send(event)

    await paced(n, rate, send)
    await until(lambda: sum(1 for i in sent if i in hooks.at), n, 60.0 + n / 50)
    return [hooks.at[i] - sent[i] for i in sent]


# -- the scenario -------------------------------------------------------------------------


def _idle_ones(start: int, stop_: int, hooks: Hooks) -> list[Subscription]:
    # each its own exact event id that no event has: the router never matches them
    return [
        subscription(f"bench-idle-{i:05d}", hooks.url(f"idle/{i}"), [VERHUISD],
                     [{"exact": {"id": str(uuid.uuid4())}}])
        for i in range(start, stop_)
    ]  # fmt: skip


async def crowd_scenario(ctx: BenchContext) -> list[Figure]:
    """Idle cost and latency with 0, N/4 and N idle subscriptions; a fan-out to M."""
    size = ctx.size
    crowd, middle, fan = size.crowd_idle, size.crowd_idle // 4, size.fan_out
    n, rate = int(size.crowd_rate * size.crowd_s), size.crowd_rate
    settings = bench_settings(ctx, "crowd")
    hooks, factory = Hooks(), EventFactory(8, today=dutch_today())
    idle: dict[int, Idle] = {}
    lat: dict[int, list[float]] = {}
    await hooks.start()
    try:
        active = subscription("bench-active", hooks.url("active"), list(registry().types()))
        async with running_bus(settings, [active]) as bus:
            broker = await broker_pid(settings.kafka.bootstrap_servers)
            await warm_up(bus, hooks, factory.mixed(_WARM_UP))
            await bus.reading(120.0)
            for count, step in ((0, 0), (middle, middle), (crowd, crowd - middle)):
                if step:
                    await bus.put(_idle_ones(count - step, count, hooks))
                    await bus.reading(120.0 + count / 10)
                idle[count] = await idle_window(bus, size.crowd_window_s, broker)
                ctx.progress(f"  crowd: {count} idle: {idle[count]}")
                if count in (0, crowd):
                    lat[count] = await latencies(bus, hooks, factory, n, rate)
            fan_s = await _fan_out(bus, hooks, factory, fan)
    finally:
        await hooks.stop()
    return _figures(idle, lat, fan_s, crowd=crowd, middle=middle, fan=fan, rate=rate)


async def _fan_out(bus: Bus, hooks: Hooks, factory: EventFactory, fan: int) -> float:
    """Seconds from publishing one event to its last receipt by `fan` subscriptions."""
    event_id = str(uuid.uuid4())
    await bus.put([
        subscription(f"bench-fan-{i:05d}", hooks.url(f"fan/{i}"), [VERHUISD],
                     [{"exact": {"id": event_id}}])
        for i in range(fan)
    ])  # fmt: skip
    await bus.reading(120.0 + fan / 10)
    paths = [f"/fan/{i}" for i in range(fan)]
    sent = await bus.send(replace(factory.verhuisd(), id=event_id))
    await until(lambda: sum(1 for p in paths if p in hooks.paths), fan, 60.0 + fan / 20)
    return max(hooks.paths[p] for p in paths) - sent


def _figures(
    idle: dict[int, Idle], lat: dict[int, list[float]], fan_s: float, *,
    crowd: int, middle: int, fan: int, rate: float,
) -> list[Figure]:  # fmt: skip
    none, many, mid = idle[0], idle[crowd], idle[middle]
    p50_0, p99_0 = percentiles(lat[0])
    p50_n, p99_n = percentiles(lat[crowd])
    c = f"{crowd:,} idle subscriptions"
    return [
        Figure.of(f"idle cost: delivery CPU with {c} vs with none + {CPU_BUDGET} cores "
                  f"(target: adds < {CPU_BUDGET})",
                  value=many.cores, baseline=none.cores + CPU_BUDGET, unit="cores",
                  target=1.0, higher_is_better=False),
        Figure.of(f"idle cost: delivery RSS with {c} vs with none + {RSS_BUDGET_MB:.0f} MB "
                  f"(target: adds < {RSS_BUDGET_MB:.0f} MB)",
                  value=many.rss_mb, baseline=none.rss_mb + RSS_BUDGET_MB, unit="MB",
                  target=1.0, higher_is_better=False),
        Figure.of(f"idle cost: delivery CPU with {middle:,} idle subscriptions vs with none",
                  value=mid.cores, baseline=none.cores, unit="cores", target=None,
                  higher_is_better=False),
        Figure.of(f"idle cost: delivery RSS with {middle:,} idle subscriptions vs with none",
                  value=mid.rss_mb, baseline=none.rss_mb, unit="MB", target=None,
                  higher_is_better=False),
        Figure.of(f"idle cost: delivery→broker bytes/s with {c} vs with none",
                  value=many.bytes_s, baseline=none.bytes_s, unit="bytes/s", target=None,
                  higher_is_better=False),
        Figure.of(f"idle cost: delivery→broker data segments/s (≈ requests/s) with {c} vs "
                  "with none", value=many.segments_s, baseline=none.segments_s,
                  unit="segments/s", target=None, higher_is_better=False),
        Figure.of(f"idle cost: broker CPU (proxy for its requests; shared broker: all its "
                  f"clients) with {c} vs with none",
                  value=many.broker_cores, baseline=none.broker_cores, unit="cores",
                  target=None, higher_is_better=False),
        Figure.of(f"beside the crowd: publish→webhook p50 with {c} vs with none, {rate}/s "
                  f"(target ≤ {LATENCY_FACTOR}×)",
                  value=p50_n, baseline=p50_0, unit="ms", target=1 / LATENCY_FACTOR,
                  higher_is_better=False),
        Figure.of(f"beside the crowd: publish→webhook p99 with {c} vs with none, {rate}/s "
                  f"(target ≤ {LATENCY_FACTOR}×)",
                  value=p99_n, baseline=p99_0, unit="ms", target=1 / LATENCY_FACTOR,
                  higher_is_better=False),
        Figure.of(f"fan-out: one event to {fan:,} subscriptions, until the last receipt, vs "
                  f"to one (p50 beside the crowd)",
                  value=fan_s * 1000, baseline=p50_n, unit="ms", target=None,
                  higher_is_better=False),
    ]  # fmt: skip
