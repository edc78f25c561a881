"""`gemeentebus bench`: throughput figures, each measured against a baseline in the same run.

A scenario is an async function from a `BenchContext` to a list of `Figure`s; `SCENARIOS`
lists them in the order they run (later issues add router, webhook latency and replay).
Every figure is a ratio to a baseline measured on the same machine in the same run, so the
numbers mean something on a noisy laptop too; a missed target is reported, never raised.

Scenarios that need Kafka get the broker `KAFKA_BOOTSTRAP_SERVERS` names, or a local broker
on free ports in a temporary folder that is stopped at the end, even on error. Their topics
live in a fresh namespace and are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import platform
import re
import resource
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from fastavro import schemaless_reader, schemaless_writer
from pydantic import SecretStr

from connectors.kafka_local import LocalKafka, fetch_jars, free_port_range
from streams import codec
from streams.app import make_producer
from streams.attributes import partition_key
from streams.config import ENV, SecuritySettings, Settings
from streams.envelope import CloudEvent
from streams.generators import EventFactory
from streams.ingress import Gate
from streams.schemas import registry
from streams.topics import Topics, TopicSpec, bus_topics, create_topics
from streams.validator import BATCH_SIZE, Validator

__all__ = [
    "DEFAULT_OUTPUT",
    "FULL",
    "QUICK",
    "SCENARIOS",
    "BenchContext",
    "Figure",
    "Scenario",
    "Size",
    "run_bench",
]

log = logging.getLogger(__name__)

DEFAULT_OUTPUT: Final = Path("bench/results.json")
_PUBLISHER_KEY: Final = b"bench"
# Synthetic data only: the bench never needs (or sees) the production pseudonym key.
_BENCH_PSEUDONYM_KEY: Final = "gemeentebus-bench"
_POLL_S: Final = 0.02


@dataclass(frozen=True, slots=True, kw_only=True)
class Size:
    """How much work each scenario does."""

    events_per_type: int  # codec scenario: pre-generated events of each type
    repeats: int  # codec scenario: best of this many timed passes
    kafka_records: int  # validator scenario: ingress records


QUICK: Final = Size(events_per_type=2_000, repeats=5, kafka_records=20_000)
FULL: Final = Size(events_per_type=10_000, repeats=7, kafka_records=200_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    """One measured figure and its baseline; `ratio` is oriented so that higher is better."""

    name: str
    value: float
    baseline: float
    unit: str
    ratio: float
    target: float
    met: bool

    @classmethod
    def of(
        cls,
        name: str,
        *,
        value: float,
        baseline: float,
        unit: str,
        target: float,
        higher_is_better: bool = True,
    ) -> Figure:
        """A figure whose ratio is value/baseline (baseline/value for times and latencies)."""
        top, bottom = (value, baseline) if higher_is_better else (baseline, value)
        ratio = top / bottom if bottom > 0 else 0.0
        return cls(
            name=name,
            value=round(value, 3),
            baseline=round(baseline, 3),
            unit=unit,
            ratio=round(ratio, 4),
            target=target,
            met=ratio >= target,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchContext:
    """What a scenario gets: settings, the size of the run, the broker if it asked for one."""

    settings: Settings
    quick: bool
    size: Size
    bootstrap: str | None
    progress: Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named benchmark; `needs_kafka` makes `run_bench` provide a broker."""

    name: str
    run: Callable[[BenchContext], Awaitable[list[Figure]]]
    needs_kafka: bool = False


# --- the codec: validate+encode and decode against bare fastavro (issue 3) ------------------


def _best_of(repeats: int, *passes: Callable[[], object]) -> list[float]:
    """The best time of each pass over `repeats` rounds, passes interleaved within a round."""
    best = [float("inf")] * len(passes)
    for _ in range(repeats):
        for i, work in enumerate(passes):
            started = time.perf_counter()
            work()
            best[i] = min(best[i], time.perf_counter() - started)
    return best


def _events_of(event_type: str, count: int, today: date) -> list[CloudEvent]:
    factory = EventFactory(len(event_type), today=today)
    make = {
        "nl.brp.persoon-verhuisd": factory.verhuisd,
        "nl.brp.persoon-overleden": factory.overleden,
        "nl.overheid.zaken.zaak-gemuteerd": factory.zaak_gemuteerd,
    }[event_type]
    factory.population = max(factory.population, count // 4)
    return [make() for _ in range(count)]


async def codec_scenario(ctx: BenchContext) -> list[Figure]:
    """Per event type: `Gate.accept` vs bare `schemaless_writer`, `from_kafka` vs bare reader."""
    today = date.today()
    gate = Gate(Topics("bench"), _BENCH_PSEUDONYM_KEY.encode())
    figures = []
    for event_type in registry().types():
        events = _events_of(event_type, ctx.size.events_per_type, today)
        schema = registry().current(event_type).schema
        datas = [e.data for e in events]
        records = [gate.accept(e, today=today).record for e in events]
        values = [r.value for r in records]

        def full_encode(events: list[CloudEvent] = events) -> None:
            for event in events:
                gate.accept(event, today=today)

        def bare_encode(datas: list[Mapping[str, Any]] = datas, schema: Any = schema) -> None:
            for data in datas:
                out = io.BytesIO()
                schemaless_writer(out, schema, data)
                out.getvalue()

        def full_decode(records: list[codec.KafkaRecord] = records) -> None:
            for record in records:
                codec.from_kafka(record)

        def bare_decode(values: list[bytes] = values, schema: Any = schema) -> None:
            for value in values:
                schemaless_reader(io.BytesIO(value), schema, None)

        enc, bare_enc, dec, bare_dec = _best_of(
            ctx.size.repeats, full_encode, bare_encode, full_decode, bare_decode
        )
        n = len(events)
        for label, full, bare in (
            ("validate+encode vs bare encode", enc, bare_enc),
            ("decode vs bare decode", dec, bare_dec),
        ):
            figures.append(
                Figure.of(
                    f"{label}: {event_type}",
                    value=n / full,
                    baseline=n / bare,
                    unit="events/s",
                    target=0.5,
                )
            )
        await asyncio.sleep(0)
    return figures


# --- the validator against a raw passthrough, on a real broker (issue 4) -------------------


async def _publish(settings: Settings, topics: Sequence[str], n: int) -> None:
    """`n` valid ingress records into each of `topics`, as a publisher writes them (binary
    mode, keyed by person), made in chunks so the bench's own data stays out of the RSS."""
    factory = EventFactory(4, today=date.today())
    producer = make_producer(settings, "bench-publisher")
    await producer.start()
    try:
        for start in range(0, n, 5_000):
            records = [
                codec.to_kafka(e, key=partition_key(e.type, e.data, _PUBLISHER_KEY))
                for e in factory.mixed(min(5_000, n - start))
            ]
            futures = [
                await producer.send(topic, r.value, key=r.key, headers=list(r.headers))
                for topic in topics
                for r in records
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass(slots=True)
class _Clock:
    """When a run started, when its first output appeared and when the last one did."""

    started: float
    first: float | None = None
    first_count: int = 0
    done: float | None = None


async def _watch(bootstrap: str, partitions: list[TopicPartition], n: int, clock: _Clock) -> None:
    """Poll the end offsets of `partitions` (never consuming) until they hold `n` records."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        while True:
            count = sum((await consumer.end_offsets(partitions)).values())
            now = time.perf_counter()
            if count and clock.first is None:
                clock.first, clock.first_count = now, count
            if count >= n:
                clock.done = now
                return
            await asyncio.sleep(_POLL_S)
    finally:
        await consumer.stop()


async def _passthrough(settings: Settings, source: str, target: str, n: int) -> tuple[float, float]:
    """A validator without validation: consume, produce unchanged (acks=all), commit.

    Returns the time of the first consume and of the last delivery.
    """
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=f"{settings.kafka.topic_prefix}.passthrough",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = make_producer(settings, "bench-passthrough")
    await producer.start()
    await consumer.start()
    first, moved, committed = 0.0, 0, time.perf_counter()
    try:
        while moved < n:
            batches = await consumer.getmany(timeout_ms=50, max_records=BATCH_SIZE)
            records = [r for part in batches.values() for r in part]
            if not records:
                continue
            first = first or time.perf_counter()
            futures = [
                await producer.send(target, r.value, key=r.key, headers=list(r.headers))
                for r in records
            ]
            await asyncio.gather(*futures)
            moved += len(records)
            if time.perf_counter() - committed >= 1.0:  # like Faust's commit interval
                await consumer.commit()
                committed = time.perf_counter()
        last = time.perf_counter()
        await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
    return first, last


def _namespace(settings: Settings, bootstrap: str, role: str, token: str) -> Settings:
    prefix = f"{settings.kafka.topic_prefix[:16]}-bench-{token}-{role}"
    kafka = settings.kafka.model_copy(
        update={"bootstrap_servers": bootstrap, "topic_prefix": prefix}
    )
    security = SecuritySettings(pseudonym_key=SecretStr(_BENCH_PSEUDONYM_KEY))
    return settings.model_copy(update={"kafka": kafka, "security": security})


async def _delete_topics(settings: Settings, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        await admin.start()
        await admin.delete_topics(names)
    except (KafkaError, OSError) as exc:  # cleanup is best effort: the figures still count
        log.warning("could not delete the bench topics: %s", exc)
    finally:
        await admin.close()


def _partitions(names: Sequence[str], count: int) -> list[TopicPartition]:
    return [TopicPartition(name, p) for name in names for p in range(count)]


async def validator_scenario(ctx: BenchContext) -> list[Figure]:
    """The Faust `Validator` vs a raw aiokafka passthrough over the same ingress records."""
    assert ctx.bootstrap is not None
    n, token = ctx.size.kafka_records, uuid.uuid4().hex[:8]
    raw = _namespace(ctx.settings, ctx.bootstrap, "raw", token)
    val = _namespace(ctx.settings, ctx.bootstrap, "val", token)
    raw_topics, val_topics = Topics(raw.kafka.topic_prefix), Topics(val.kafka.topic_prefix)
    parts = raw.kafka.partitions
    raw_specs = [TopicSpec(raw_topics.ingress, parts), TopicSpec(raw_topics.events("raw"), parts)]
    val_specs = bus_topics(val.kafka, registry().types())
    deadline_s = 120.0 + n / 500
    try:
        await create_topics(raw.kafka, raw_specs)
        await create_topics(val.kafka, val_specs)
        await _publish(raw, [raw_topics.ingress, val_topics.ingress], n)

        # (a) the raw passthrough, watched from outside like the validator
        raw_clock, raw_out = _Clock(time.perf_counter()), raw_topics.events("raw")
        async with asyncio.timeout(deadline_s), asyncio.TaskGroup() as group:
            group.create_task(_watch(ctx.bootstrap, _partitions([raw_out], parts), n, raw_clock))
            passthrough = group.create_task(_passthrough(raw, raw_topics.ingress, raw_out, n))
        first, last = passthrough.result()

        # (b) the real validator, on a copy of the same records
        validator = Validator(val)
        val_clock = _Clock(time.perf_counter())
        events_topics = _partitions([val_topics.events(t) for t in registry().types()], parts)
        await validator.start()
        try:
            async with asyncio.timeout(deadline_s):
                await _watch(ctx.bootstrap, events_topics, n, val_clock)
        finally:
            await validator.stop()
    finally:
        await _delete_topics(raw, [s.name for s in raw_specs])
        await _delete_topics(val, [s.name for s in val_specs])

    assert val_clock.done is not None and raw_clock.done is not None
    assert val_clock.first is not None and raw_clock.first is not None
    as_specified = Figure.of(
        "validator vs raw passthrough (validator from start, raw from first consume)",
        value=n / (val_clock.done - val_clock.started),
        baseline=n / (last - first),
        unit="records/s",
        target=0.8,
    )

    figures = [as_specified]
    # Steady state needs outputs to watch arrive: not there when one poll saw most of them.
    if max(raw_clock.first_count, val_clock.first_count) <= n // 2:
        figures.append(
            Figure.of(
                "validator vs raw passthrough, steady state (first output to last)",
                value=(n - val_clock.first_count) / (val_clock.done - val_clock.first),
                baseline=(n - raw_clock.first_count) / (raw_clock.done - raw_clock.first),
                unit="records/s",
                target=0.8,
            )
        )
    ctx.progress(
        f"  start to first output: validator {val_clock.first - val_clock.started:.2f} s, "
        f"raw passthrough {raw_clock.first - raw_clock.started:.2f} s"
    )
    return figures


SCENARIOS: Final[tuple[Scenario, ...]] = (
    Scenario("codec", codec_scenario),
    Scenario("validator", validator_scenario, needs_kafka=True),
)


# --- the runner ----------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _machine() -> dict[str, Any]:
    cpu_model = platform.processor() or None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(memory / 2**30, 1),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _versions(broker: str | None) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("gemeentebus", "faust-streaming", "aiokafka", "fastavro"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["kafka_broker"] = broker
    return out


@contextlib.contextmanager
def _broker(
    settings: Settings, needed: bool, progress: Callable[[str], None]
) -> Iterator[tuple[str | None, str | None]]:
    """(bootstrap servers, broker version if known): the named cluster or a local one."""
    if not needed:
        yield None, None
        return
    if os.environ.get(ENV["bootstrap"]):
        yield settings.kafka.bootstrap_servers, None
        return
    local = settings.local_kafka
    with tempfile.TemporaryDirectory(prefix="gemeentebus-bench-") as data_dir:
        kafka = LocalKafka(
            data_dir=Path(data_dir),
            cache_dir=local.cache_dir,
            port=free_port_range(2),
            heap_mb=local.heap_mb,
            start_timeout_s=local.start_timeout_s,
        )
        try:
            bootstrap = kafka.up(progress=progress)
            jars = fetch_jars(local.cache_dir, progress=progress)
            found = [re.fullmatch(r"kafka-clients-(.+)\.jar", p.name) for p in jars.iterdir()]
            version = next((m.group(1) for m in found if m), None)
            yield bootstrap, version
        finally:
            kafka.down()


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _line(scenario: str, seconds: float, figures: list[Figure]) -> str:
    shown = "; ".join(
        f"{f.name}: {_num(f.value)} vs {_num(f.baseline)} {f.unit} "
        f"(ratio {f.ratio:.2f}, target {f.target:g} {'met' if f.met else 'MISSED'})"
        for f in figures
    )
    return f"[{scenario} {seconds:.1f}s] {shown}"


def _markdown(result: dict[str, Any]) -> str:
    machine, versions = result["machine"], result["versions"]
    lines = [
        "# gemeentebus bench",
        "",
        f"{result['started']}, {'quick' if result['quick'] else 'full'} run, "
        f"{result['duration_s']:.0f} s. {machine['cores']} cores, {machine['memory_gb']} GB, "
        f"{machine['cpu_model']}, Python {machine['python']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v or 'unknown'}" for k, v in versions.items()) + ".",
        "",
        "Ratio: measured ÷ baseline for throughput, baseline ÷ measured for times "
        "(higher is better); both measured in the same run.",
        "",
        "| figure | value | baseline | unit | ratio | target | met |",
        "|---|---:|---:|---|---:|---:|:---:|",
    ]
    for f in result["figures"]:
        lines.append(
            f"| {f['name']} | {_num(f['value'])} | {_num(f['baseline'])} | {f['unit']} "
            f"| {f['ratio']:.2f} | ≥ {f['target']:g} | {'yes' if f['met'] else 'no'} |"
        )
    runs = ", ".join(f"{r['name']} {r['duration_s']:.1f} s" for r in result["scenarios"])
    lines += ["", f"Scenarios: {runs}. Peak RSS {result['peak_rss_mb']} MB.", ""]
    return "\n".join(lines)


async def _run_all(
    scenarios: Sequence[Scenario], ctx: BenchContext
) -> tuple[list[Figure], list[dict[str, Any]]]:
    figures: list[Figure] = []
    runs: list[dict[str, Any]] = []
    for scenario in scenarios:
        started = time.perf_counter()
        found = await scenario.run(ctx)
        seconds = time.perf_counter() - started
        ctx.progress(_line(scenario.name, seconds, found))
        figures += found
        runs.append(
            {"name": scenario.name, "duration_s": round(seconds, 2), "peak_rss_mb": _peak_rss_mb()}
        )
    return figures, runs


def run_bench(
    settings: Settings,
    *,
    quick: bool,
    output: Path = DEFAULT_OUTPUT,
    progress: Callable[[str], None] = print,
    scenarios: Sequence[Scenario] = SCENARIOS,
    size: Size | None = None,
) -> dict[str, Any]:
    """Run the scenarios; write `output` (JSON) and the same table as Markdown next to it.

    Returns what was written. `size` overrides the work QUICK or FULL implies.
    """
    started = datetime.now(UTC)
    clock = time.perf_counter()
    with _broker(settings, any(s.needs_kafka for s in scenarios), progress) as (bootstrap, ver):
        ctx = BenchContext(
            settings=settings,
            quick=quick,
            size=size or (QUICK if quick else FULL),
            bootstrap=bootstrap,
            progress=progress,
        )
        figures, runs = asyncio.run(_run_all(scenarios, ctx))
    result: dict[str, Any] = {
        "machine": _machine(),
        "versions": _versions(ver),
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - clock, 1),
        "quick": quick,
        "figures": [asdict(f) for f in figures],
        "scenarios": runs,
        "peak_rss_mb": _peak_rss_mb(),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    output.with_suffix(".md").write_text(_markdown(result))
    return result
