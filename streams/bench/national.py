"""The national simulation: every municipality, the registries and the zaaksystemen at once.

Who subscribes (`streams.bench.subscribers.Plan`): the 342 municipalities, each filtered on
its own gemeentecode, a few national registries, a few hundred zaaksystemen (per RSIN or
zaaktype); every one a path on one loopback aiohttp server in the bench's process.

What comes in: the real yearly volumes as shares per second (`Size.national_mix`: about
1.7 million moves and 170,000 deaths a year, zaak notifications in the millions a day), so
at any rate nearly all events are zaak notifications. The bus runs as deployed: 2
`gemeentebus run --role worker` and 2 `--role delivery` processes. The rate steps up
(`national_rate` × `national_step` per step, `national_s` seconds each) until a step is not
sustained: the publisher could not keep the rate, or the bus fell `SUSTAINED_DRAIN_S`
behind (a group's lag reached that many seconds of its rate, or the last delivery came
that long after the last publish). The figures are those of the highest sustained step:
events/s in, deliveries/s out, publish→webhook p50/p99, the highest consumer lag seen
(the workers' group on ingress, the delivery group on the deliver topics: committed offsets
against end offsets, sampled every second), and CPU and RSS per process. Per-core rates of
worker and delivery and a capacity extrapolation are printed.

Correctness, not timing: once every step drained, each published event must have reached
exactly the subscriptions it matches, judged from the event's data by the plan's own
rules (not by the bus's filters): recall and precision, target 1.

Every topic of the run's namespace is deleted and every process stopped, even on error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from streams.bench.broker import delete_namespace, namespace, partitions
from streams.bench.core import BenchContext, Figure, Size
from streams.bench.subscribers import Hooks, Plan, events, subscriptions
from streams.bench.workers import cpu_s, rss_mb, spawn, stop
from streams.config import Settings
from streams.contract import codec
from streams.contract.attributes import partition_key
from streams.contract.envelope import CloudEvent
from streams.contract.rules import dutch_today
from streams.contract.schemas import registry
from streams.demo.generators import EventFactory
from streams.kafka.clients import make_admin, make_consumer, make_producer
from streams.kafka.topics import Groups, Topics, bus_topics, create_topics
from streams.routing.store import SubscriptionStore

__all__ = [
    "SUSTAINED_DRAIN_S",
    "Capacity",
    "Simulation",
    "Step",
    "capacity",
    "national_scenario",
    "simulate",
]

log = logging.getLogger(__name__)

WORKERS: Final = 2
DELIVERERS: Final = 2
# A step is sustained when the bus was never this many seconds behind (`Step.sustained`).
SUSTAINED_DRAIN_S: Final = 5.0
_KEPT_RATE: Final = 0.95  # ... and the publisher kept at least this share of the rate
_TICK_S: Final = 0.01  # the publisher sends what is due every tick
_SAMPLE_S: Final = 1.0  # lag, CPU and RSS sampled this often
_WARM_UP: Final = 60
_IDLE_S: Final = 5.0  # idle CPU measured this long before the steps
_PUBLISHER_KEY: Final = b"bench"
# The capacity the README's table is computed for, and the share of a core a process may use.
PEAK_IN: Final = 5_000
PEAK_OUT: Final = 20_000
_HEADROOM: Final = 0.7


@dataclass(slots=True)
class _Sent:
    """What was published: per event id, when, and which subscriptions it should reach."""

    at: dict[str, float] = field(default_factory=dict)
    expected: dict[str, frozenset[str]] = field(default_factory=dict)
    bytes: int = 0

    def pairs(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        return [(sid, i) for i in ids for sid in self.expected[i]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One rate step, measured from its first publish until its last delivery (or until
    `SUSTAINED_DRAIN_S` × 6 after its last publish, when it never drained)."""

    offered: float  # events/s asked of the publisher
    events: int
    deliveries: int  # deliveries the events should make
    arrived: int  # of those, how many arrived
    in_rate: float  # events/s the publisher kept
    out_rate: float  # deliveries/s, first publish to last arrival
    drain_s: float  # last publish to last arrival
    p50_ms: float
    p99_ms: float
    ingress_lag: int  # highest records behind, the workers' group on ingress
    deliver_lag: int  # highest, the delivery group on every deliver topic
    missed_samples: int  # lag samples the broker did not answer
    cores: dict[str, float]  # CPU cores busy, per process (worker-1, delivery-2, bench)
    rss_mb: dict[str, float]  # highest RSS seen, per process
    in_bytes: float  # mean ingress record value
    out_bytes: float  # mean webhook body

    @property
    def sustained(self) -> bool:
        """The publisher kept the rate, and the bus was never `SUSTAINED_DRAIN_S` behind:
        neither group's lag reached that many seconds of its rate, and the last delivery
        came within it of the last publish."""
        behind = SUSTAINED_DRAIN_S
        return (
            self.in_rate >= _KEPT_RATE * self.offered
            and self.drain_s <= behind
            and self.ingress_lag <= behind * self.in_rate
            and self.deliver_lag <= behind * self.out_rate
        )

    def cpu_per(self, role: str, idle: dict[str, float]) -> float:
        """CPU seconds of the processes of `role` per event in (worker) or per delivery,
        above what they use `idle` (cores with nothing coming in)."""
        busy = sum(v - idle.get(k, 0.0) for k, v in self.cores.items() if k.startswith(role))
        rate = self.in_rate if role == "worker" else self.out_rate
        return max(0.0, busy) / rate if rate else 0.0


@dataclass(slots=True)
class _Sampler:
    """Every second: consumer lag of both groups, CPU and RSS of each process. A sample the
    broker did not answer in time is logged and counted (`missed`), and the next one taken."""

    settings: Settings
    ingress: list[TopicPartition]
    deliver: list[TopicPartition]
    pids: dict[str, int]
    ingress_lag: int = 0
    deliver_lag: int = 0
    missed: int = 0
    rss: dict[str, float] = field(default_factory=dict)

    def reset(self) -> None:
        self.ingress_lag = self.deliver_lag = self.missed = 0
        self.rss = {}

    async def run(self) -> None:
        groups = Groups(self.settings.kafka.topic_prefix)
        admin = make_admin(self.settings, "bench-lag")
        ends = make_consumer(self.settings, "bench-lag")
        await admin.start()
        await ends.start()
        try:
            # assigned, so the consumer keeps their metadata; paused, so it fetches nothing
            ends.assign(self.ingress + self.deliver)
            ends.pause(*self.ingress, *self.deliver)
            while True:
                for name, pid in self.pids.items():
                    self.rss[name] = max(self.rss.get(name, 0.0), rss_mb(pid))
                try:
                    ingress = await _lag(admin, ends, groups.validator, self.ingress)
                    deliver = await _lag(admin, ends, groups.delivery, self.deliver)
                except KafkaError as exc:
                    log.warning("a lag sample failed: %r", exc)
                    self.missed += 1
                else:
                    self.ingress_lag = max(self.ingress_lag, ingress)
                    self.deliver_lag = max(self.deliver_lag, deliver)
                await asyncio.sleep(_SAMPLE_S)
        finally:
            await ends.stop()
            await admin.close()


async def _lag(admin: Any, ends: Any, group: str, tps: list[TopicPartition]) -> int:
    """Records in `tps` the group has not committed (from the start where it has none)."""
    committed = await admin.list_consumer_group_offsets(group, partitions=tps)
    end = await ends.end_offsets(tps)
    return sum(max(0, end[tp] - max(0, committed[tp].offset if tp in committed else 0))
               for tp in tps)  # fmt: skip


async def _until(done: Callable[[], bool], within: float) -> bool:
    """Poll `done` until it holds or `within` seconds passed; whether it held."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while not done():  # noqa: ASYNC110 - a poll: arrivals signal nothing
                await asyncio.sleep(0.05)
            return True
    return False


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    if len(latencies) < 2:
        return (latencies[0] * 1000,) * 2 if latencies else (0.0, 0.0)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


@dataclass(slots=True)
class _Bus:
    """The running simulation: the publisher, the hooks, the spawned processes."""

    settings: Settings
    plan: Plan
    hooks: Hooks
    producer: Any
    sampler: _Sampler
    pids: dict[str, int]
    factory: EventFactory = field(default_factory=lambda: EventFactory(16, today=dutch_today()))
    sent: _Sent = field(default_factory=_Sent)

    async def publish(
        self, events: list[CloudEvent], rate: float | None
    ) -> tuple[list[str], float]:
        """Send `events` at `rate` (all at once when None): (their ids, seconds it took)."""
        ingress = Topics(self.settings.kafka.topic_prefix).ingress
        records = [
            (e.id, self.plan.expected(e), codec.to_kafka(e, key=partition_key(
                e.type, e.data, _PUBLISHER_KEY)))
            for e in events
        ]  # fmt: skip
        futures = []
        began, sent = time.perf_counter(), 0
        while sent < len(records):
            due = len(records) if rate is None else int((time.perf_counter() - began) * rate) + 1
            for event_id, expected, record in records[sent:due]:
                self.sent.at[event_id] = time.time()
                self.sent.expected[event_id] = expected
                self.sent.bytes += len(record.value)
                headers = list(record.headers)
                sending = self.producer.send(ingress, record.value, key=record.key, headers=headers)
                futures.append(await sending)
            sent = max(sent, min(due, len(records)))
            if sent < len(records):
                await asyncio.sleep(_TICK_S)
        seconds = time.perf_counter() - began
        await asyncio.gather(*futures)
        return [r[0] for r in records], seconds

    def arrived(self, pairs: list[tuple[str, str]]) -> int:
        return sum(1 for p in pairs if p in self.hooks.at)

    async def step(self, rate: float, seconds: float, mix: tuple[float, float, float]) -> Step:
        n = max(1, int(rate * seconds))
        made = events(self.factory, n, mix)
        self.sampler.reset()
        cpu_before = {name: cpu_s([pid]) for name, pid in self.pids.items()}
        bytes_before = self.sent.bytes
        wall = time.perf_counter()
        ids, publish_s = await self.publish(made, rate)
        published = time.time()
        pairs = self.sent.pairs(ids)
        await _until(lambda: self.arrived(pairs) == len(pairs), SUSTAINED_DRAIN_S * 6)
        wall = time.perf_counter() - wall
        cores = {name: (cpu_s([pid]) - cpu_before[name]) / wall for name, pid in self.pids.items()}
        times = [self.hooks.at[p] for p in pairs if p in self.hooks.at]
        last = max(times, default=published)
        first = min(self.sent.at[i] for i in ids)
        latencies = [self.hooks.at[p] - self.sent.at[p[1]] for p in pairs if p in self.hooks.at]
        p50, p99 = _percentiles(latencies)
        return Step(
            offered=rate,
            events=n,
            deliveries=len(pairs),
            arrived=len(times),
            in_rate=n / publish_s if publish_s > 0 else float(n),
            out_rate=len(times) / (last - first) if last > first else 0.0,
            drain_s=max(0.0, last - published) if len(times) == len(pairs) else math.inf,
            p50_ms=p50,
            p99_ms=p99,
            ingress_lag=self.sampler.ingress_lag,
            deliver_lag=self.sampler.deliver_lag,
            missed_samples=self.sampler.missed,
            cores=cores,
            rss_mb=dict(self.sampler.rss),
            in_bytes=(self.sent.bytes - bytes_before) / n,
            out_bytes=self.hooks.bytes / max(1, len(self.hooks.at)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Simulation:
    """What `simulate` measured: every step, and whether every event reached exactly its
    subscriptions (over all steps and the warm-up, once drained)."""

    steps: list[Step]
    idle: dict[str, float]  # CPU cores per process with nothing published, before the steps
    subscriptions: int
    expected: int  # (subscription, event) pairs the plan says should arrive
    recall: int  # of those, how many arrived
    delivered: int  # distinct (subscription, event) pairs that arrived
    precision: int  # of those, how many the plan expected
    duplicates: int


async def _stable(settings: Settings, groups: dict[str, int], within: float) -> None:
    """Wait until each of `groups` is stable with its number of members (all joined)."""
    admin = make_admin(settings, "bench-groups")
    await admin.start()
    seen: dict[str, tuple[str, int]] = {}
    try:
        async with asyncio.timeout(within):
            while any(seen.get(g) != ("Stable", members) for g, members in groups.items()):
                await asyncio.sleep(0.5)
                try:  # one group a request: of two asked at once, one comes back nameless
                    described = [await admin.describe_consumer_groups([g]) for g in groups]
                except KafkaConnectionError as exc:  # a connection the broker closed: again
                    log.info("describing the groups: %s", exc)
                    continue
                seen = {g[1]: (g[2], len(g[5])) for (r,) in described for g in r.groups}
    except TimeoutError:
        raise RuntimeError(f"the groups did not settle in {within:.0f} s: {seen}") from None
    finally:
        await admin.close()


async def simulate(settings: Settings, size: Size, progress: Callable[[str], None]) -> Simulation:
    """Run the simulation on `settings`' namespace (its topics are left for the caller)."""
    plan = Plan.national(
        size.national_municipalities, size.national_zaaksystemen, size.national_registries
    )
    kafka, t = settings.kafka, Topics(settings.kafka.topic_prefix)
    hooks = Hooks()
    store = SubscriptionStore(settings, name="bench-national")
    producer = make_producer(settings, "bench-national")
    processes: list[asyncio.subprocess.Process] = []
    sampling: asyncio.Task[None] | None = None
    await hooks.start()
    try:
        await create_topics(kafka, bus_topics(kafka, registry().types()))
        await store.start()
        await store.ready()
        subscribed = subscriptions(plan, hooks.base)
        started = time.perf_counter()
        await store.put_many(subscribed)
        progress(f"  national: {len(subscribed)} subscriptions in "
                 f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        processes = [*await spawn(settings, WORKERS, "worker"),
                     *await spawn(settings, DELIVERERS, "delivery")]  # fmt: skip
        pids = {f"worker-{i + 1}": p.pid for i, p in enumerate(processes[:WORKERS])}
        pids |= {f"delivery-{i + 1}": p.pid for i, p in enumerate(processes[WORKERS:])}
        groups = Groups(kafka.topic_prefix)
        await _stable(settings, {groups.validator: WORKERS, groups.delivery: DELIVERERS}, 180.0)
        pids["bench"] = os.getpid()
        deliver = partitions([t.deliver(s.id) for s in subscribed], kafka.deliver_partitions)
        sampler = _Sampler(settings, partitions([t.ingress], kafka.partitions), deliver, pids)
        await producer.start()
        bus = _Bus(settings, plan, hooks, producer, sampler, pids)
        # every kind of event, delivered before the clock starts
        ids, _ = await bus.publish(events(bus.factory, _WARM_UP, (1.0, 1.0, 1.0)), None)
        warm = bus.sent.pairs(ids)
        if not await _until(lambda: bus.arrived(warm) == len(warm), 120.0):
            raise RuntimeError(f"warm-up: {bus.arrived(warm)} of {len(warm)} deliveries arrived")
        sampling = asyncio.create_task(sampler.run())
        before, began = {k: cpu_s([pid]) for k, pid in pids.items()}, time.perf_counter()
        await asyncio.sleep(_IDLE_S)  # what the processes cost with nothing to do
        quiet = time.perf_counter() - began
        idle = {k: (cpu_s([pid]) - before[k]) / quiet for k, pid in pids.items()}
        steps: list[Step] = []
        rate = float(size.national_rate)
        for _ in range(size.national_steps):
            step = await bus.step(rate, size.national_s, size.national_mix)
            steps.append(step)
            if sampling.done():  # it only ends by a bug: say which
                await sampling
            progress("  national: " + _describe(step))
            if not step.sustained:
                break
            rate = round(rate * size.national_step)
        everything = bus.sent.pairs(list(bus.sent.at))
        await _until(
            lambda: bus.arrived(everything) == len(everything), 60.0 + len(everything) / 200
        )
        wanted = set(everything)
        delivered = set(hooks.at)
        return Simulation(
            steps=steps,
            idle=idle,
            subscriptions=len(subscribed),
            expected=len(wanted),
            recall=len(wanted & delivered),
            delivered=len(delivered),
            precision=len(delivered & wanted),
            duplicates=hooks.duplicates,
        )
    finally:
        if sampling is not None:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
        await stop(processes)
        await producer.stop()
        await store.stop()
        await hooks.stop()


def _describe(step: Step) -> str:
    cores = ", ".join(f"{k} {v:.2f}" for k, v in step.cores.items())
    rss = ", ".join(f"{k} {v:.0f}" for k, v in step.rss_mb.items())
    verdict = "sustained" if step.sustained else "NOT sustained"
    return (
        f"{step.offered:.0f}/s offered: {step.in_rate:.0f} events/s in, {step.out_rate:.0f} "
        f"deliveries/s out ({step.arrived}/{step.deliveries}), drain {step.drain_s:.1f} s, "
        f"p50 {step.p50_ms:.0f} ms, p99 {step.p99_ms:.0f} ms, lag ingress {step.ingress_lag} "
        f"deliver {step.deliver_lag} ({step.missed_samples} samples missed); cores {cores}; "
        f"RSS MB {rss}: {verdict}"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Capacity:
    """Processes and partitions for `events_in`/s in and `deliveries_out`/s out, each process
    at most `_HEADROOM` of a core busy, from measured CPU per event and per delivery."""

    events_in: int
    deliveries_out: int
    workers: int
    deliverers: int
    ingress_partitions: int
    deliver_topics_mb_s: float
    ingress_mb_s: float


def capacity(
    step: Step, idle: dict[str, float], events_in: int = PEAK_IN, deliveries_out: int = PEAK_OUT
) -> Capacity:
    """The processes and partitions `step`'s CPU per event and per delivery (above `idle`)
    ask for at this peak; each process also pays its idle share."""
    per_worker = sum(v for k, v in idle.items() if k.startswith("worker")) / WORKERS
    per_deliverer = sum(v for k, v in idle.items() if k.startswith("delivery")) / DELIVERERS
    work = events_in * step.cpu_per("worker", idle)
    workers = math.ceil(work / max(0.1, _HEADROOM - per_worker))
    work = deliveries_out * step.cpu_per("delivery", idle)
    deliverers = math.ceil(work / max(0.1, _HEADROOM - per_deliverer))
    # twice the workers, rounded up to a multiple of 6: room to double without repartitioning
    ingress = 6 * math.ceil(2 * max(1, workers) / 6)
    return Capacity(
        events_in=events_in,
        deliveries_out=deliveries_out,
        workers=max(1, workers),
        deliverers=max(1, deliverers),
        ingress_partitions=ingress,
        deliver_topics_mb_s=deliveries_out * step.out_bytes / 1e6,
        ingress_mb_s=events_in * step.in_bytes / 1e6,
    )


def _peak(steps: list[Step]) -> Step:
    """The highest sustained step, or the first when none was."""
    sustained = [s for s in steps if s.sustained]
    return sustained[-1] if sustained else steps[0]


async def national_scenario(ctx: BenchContext) -> list[Figure]:
    """The national simulation at the highest sustained rate; informational figures, and
    whether every event reached exactly the subscriptions it matches (target 1)."""
    assert ctx.bootstrap is not None
    settings = namespace(ctx.settings, ctx.bootstrap, "natl", uuid.uuid4().hex[:8])
    http = settings.http.model_copy(update={"host": "127.0.0.1", "port": 0})
    settings = settings.model_copy(update={"http": http})
    try:
        run = await simulate(settings, ctx.size, ctx.progress)
    finally:
        deleted = await delete_namespace(settings)
        ctx.progress(f"  national: deleted the run's {deleted} topics")
    peak, first = _peak(run.steps), run.steps[0]
    need = capacity(peak, run.idle)
    verdict = "sustained" if peak.sustained else "none sustained"
    ctx.progress(
        f"  national: peak {peak.in_rate:.0f} events/s in ({verdict}); worker "
        f"{peak.cpu_per('worker', run.idle) * 1e6:.0f} µs CPU/event above idle "
        f"({', '.join(f'{k} {v:.2f}' for k, v in run.idle.items())} cores), delivery "
        f"{peak.cpu_per('delivery', run.idle) * 1e6:.0f} µs CPU/delivery; "
        f"for {need.events_in:,}/s in "
        f"and {need.deliveries_out:,}/s out: {need.workers} workers on {need.ingress_partitions} "
        f"ingress partitions, {need.deliverers} delivery processes, {need.ingress_mb_s:.1f} MB/s "
        f"into ingress, {need.deliver_topics_mb_s:.1f} MB/s out of the deliver topics"
    )  # fmt: skip
    at = f"{peak.offered:.0f}/s offered, {run.subscriptions} subscriptions"
    figures = [
        Figure.of(f"national: events/s in vs offered, {at}", value=peak.in_rate,
                  baseline=peak.offered, unit="events/s", target=None),
        Figure.of(f"national: deliveries/s out vs events/s in (fan-out), {at}",
                  value=peak.out_rate, baseline=peak.in_rate, unit="deliveries/s", target=None),
        Figure.of(f"national: publish→webhook p50 vs at {first.offered:.0f}/s", value=peak.p50_ms,
                  baseline=first.p50_ms, unit="ms", target=None, higher_is_better=False),
        Figure.of(f"national: publish→webhook p99 vs at {first.offered:.0f}/s", value=peak.p99_ms,
                  baseline=first.p99_ms, unit="ms", target=None, higher_is_better=False),
        Figure.of("national: max ingress lag (workers' group) vs events in one second",
                  value=peak.ingress_lag, baseline=peak.in_rate, unit="records", target=None,
                  higher_is_better=False),
        Figure.of("national: max deliver-topic lag (delivery group) vs deliveries in one second",
                  value=peak.deliver_lag, baseline=peak.out_rate, unit="records", target=None,
                  higher_is_better=False),
    ]  # fmt: skip
    for name, cores in peak.cores.items():
        figures.append(Figure.of(f"national: CPU of {name} vs one core", value=cores,
                                 baseline=1.0, unit="cores", target=None))  # fmt: skip
    for name, mb in peak.rss_mb.items():
        figures.append(Figure.of(f"national: RSS of {name} vs at {first.offered:.0f}/s", value=mb,
                                 baseline=first.rss_mb.get(name, mb), unit="MB", target=None,
                                 higher_is_better=False))  # fmt: skip
    figures += [
        Figure.of("national: expected deliveries that arrived vs expected (target all)",
                  value=run.recall, baseline=run.expected, unit="deliveries", target=1.0),
        Figure.of("national: deliveries that arrived and were expected vs arrived (target all)",
                  value=run.precision, baseline=run.delivered, unit="deliveries", target=1.0),
    ]  # fmt: skip
    return figures
