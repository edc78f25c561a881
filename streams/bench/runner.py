"""`gemeentebus bench`: every scenario, each figure against a baseline measured in the same run.

A scenario is an async function from a `BenchContext` to a list of `Figure`s; `SCENARIOS`
lists them in the order they run, `DEFAULT_SCENARIOS` those a run without `--only` runs
(the national simulation, minutes long, only when named). Every figure is a ratio to a
baseline measured on the same machine in the same run, so the numbers mean something on a
noisy laptop too; a missed target is reported (with the why found by profiling, `WHY`),
never raised: only a crash fails a run.

Informational figures carry `target: null` and `met: null`: scale-out on a machine with
fewer cores than worker processes shows where the curve flattens, which is not a verdict
on the bus. The 1-process run is the baseline of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from streams.bench.baseline import baseline_scenario
from streams.bench.broker import broker
from streams.bench.codec import codec_scenario
from streams.bench.core import FULL, QUICK, BenchContext, Figure, Scenario, Size
from streams.bench.crowd import crowd_scenario
from streams.bench.delivery import delivery_scenario
from streams.bench.national import national_scenario
from streams.bench.recovery import recovery_scenario
from streams.bench.replay import replay_scenario
from streams.bench.router import router_scenario
from streams.bench.subscriptions import subscriptions_scenario
from streams.bench.validator import validator_scenario
from streams.bench.workers import rss_scenario, scale_out_scenario
from streams.config import Settings

__all__ = ["DEFAULT_OUTPUT", "DEFAULT_SCENARIOS", "SCENARIOS", "run_bench"]

DEFAULT_OUTPUT: Final = Path("bench/results.json")

SCENARIOS: Final[tuple[Scenario, ...]] = (
    Scenario("baseline", baseline_scenario, needs_kafka=True),
    Scenario("codec", codec_scenario),
    Scenario("validator", validator_scenario, needs_kafka=True),
    Scenario("router", router_scenario),
    Scenario("delivery", delivery_scenario, needs_kafka=True),
    Scenario("crowd", crowd_scenario, needs_kafka=True),
    Scenario("recovery", recovery_scenario, needs_kafka=True),
    Scenario("replay", replay_scenario, needs_kafka=True),
    Scenario("subscriptions", subscriptions_scenario, needs_kafka=True),
    Scenario("rss", rss_scenario, needs_kafka=True),
    Scenario("scale-out", scale_out_scenario, needs_kafka=True),
    # minutes of rate steps over hundreds of subscriptions: only with `--only national`
    Scenario("national", national_scenario, needs_kafka=True, in_default_run=False),
)
# What `gemeentebus bench` runs when no scenario is named.
DEFAULT_SCENARIOS: Final = tuple(s for s in SCENARIOS if s.in_default_run)

# Why a figure misses its target, by figure-name prefix: what profiling (pyinstrument) found.
WHY: Final[dict[str, str]] = {
    "validate+encode": "validate+encode: `Gate.accept` is validation first; in a pyinstrument "
    "profile `validation.examine` takes 56% of its time, header building (`to_kafka`) 16% "
    "and the Avro write 13%; bare fastavro only writes. Python-level checks, not a bug.",
    "decode vs bare": "decode: `from_kafka` spends a third in the Avro read and the rest "
    "parsing ce_* headers and building the frozen `CloudEvent`, which bare fastavro skips.",
    "validator vs raw": "validator: profiled (py-spy, 60,000 records, 2026-12-04): the "
    "worker's event loop is CPU-bound. Of it, ~31% is judging (`Gate.from_record` and "
    "`read_record`: headers, the Avro read, the rules, the events record), ~23% Faust's "
    "per-message path (`Consumer._drain_messages` makes two tasks per message in "
    "`wait_first`, the conductor builds an Event, the stream hands it on), ~15% producing "
    "(aiokafka's `send` and produce requests), ~5% the bench's own offset polls. The gate "
    "now skips the exactness walk for data read with the current schema (only int ranges "
    "and uuids are looked at): worker CPU 312 -> 294 µs/record. The 'validator ceiling' "
    "figure (raw passthrough + the gate, no framework) is ~0.4: reaching 0.4 needs "
    "batch consumption outside Faust's per-message stream (a plain aiokafka group "
    "consumer, as the passthrough) and a gate under ~40 µs/record. 2026-12-06: batches were "
    "the bound on a backlog (10,000 records in 765 batches of mean 13, each paying a "
    "subscription sync and a produce round trip); `EventBatches` now takes what the stream "
    "holds (20 batches of ~500) and the worker joins its group while the store reads: "
    "worker CPU 318-399 -> 227-241 µs/record, 1,197-1,893 -> 3,121-3,945 records/s on a "
    "10,000-record backlog (one process, load ~7 on 2 cores). The gate's profile is flat "
    "(Avro read, header parsing, the rules, the events record: none over ~15%).",
    "delivery: publish→webhook p99": "delivery p99: profiled per hop from record timestamps. "
    "Fixed on the way: a third Kafka hop (the routing topic), 50 ms batching windows, a "
    "subscription sync queued behind a 100 ms long poll, and 34 ms full garbage collections "
    "every ~16 s (p99 360 → 45 ms at 500/s, full runs of 2026-11-23). What is left is CPU, "
    "and it varies: six 60 s runs of the same code gave p99 45 to 286 ms (p50 14 to 38 ms). "
    "The slowest 1% cluster in a few seconds of a run, both hops at once. In those seconds "
    "the broker answers the worker's produce and fetch requests within 52 ms, the publishing "
    "process's loop never stalls, and the worker's and delivery process's event loops spend "
    "50-110 ms iterations in select, not in Python code: waiting, not working. Likeliest, "
    "they wait for a core, shared on 2 cores with the publisher, the receiver and the "
    "broker (unconfirmed: that needs scheduler traces). Raw is one hop with no work.",
    "idle cost: delivery CPU": "idle cost: profiled (py-spy, 2,000 idle subscriptions, a "
    "local broker, 2026-12-04): of the delivery process's ~0.16-0.19 cores, ~50% is aiokafka "
    "encoding and decoding fetch requests and responses, ~25% the reader's per-loop walk "
    "over every assigned partition (`Reader._back_pressure`: `idle`, `stopping`, "
    "`paused()`, ten times a second). aiokafka has no incremental fetch sessions (KIP-227): "
    "every fetch carries all 2,000 partitions both ways (~310 KB/s to the broker while "
    "nothing happens, against ~3 KB/s with none), in pure-Python structs. Fixing the reader "
    "walk alone leaves ~0.12 cores; under 0.05 needs fewer partitions per fetch: idle "
    "partitions paused and swept every few seconds (a cold subscription's first event then "
    "waits up to the sweep), or a client with fetch sessions (librdkafka).",
    "beside the crowd": "beside the crowd: p50 met since 2026-12-07 (aiokafka's fetcher "
    "walks only the partitions it may fetch, and keeps that list: `streams.kafka.fetching`); "
    "p99 is not. Per hop, timed in the delivery process (2026-12-08, 2,000 records each): "
    "deliver-topic record to the courier p50 1.7 -> 1.8 ms, but p99 4.7 -> 33.5 ms; the "
    "slow records come in clusters every ~5.1 s (0, 5.1, 10.2, 15.3 s into the window, "
    "50-110 ms each): the watcher's long poll of the ~2,000 cool partitions ends every "
    "`_WATCH_WAIT_MS` (5 s), and decoding that response and encoding the next request of "
    "2,000 partitions (pure-Python structs, ~16% of the process's samples) holds the event "
    "loop. Not fixed yet: a longer poll makes the stalls rarer but delays a just-cooled "
    "partition's first record up to the poll (the broker answers a connection's requests "
    "in order); several watchers of a few hundred partitions each would make each stall "
    "short. Run to run the ratio moves a lot (five runs of this code and the one before: "
    "p99 0.25, 0.28, 0.51, 1.22, 1.32).",
    "delivery from the deliver topic": "delivery from the deliver topic: around the "
    "target (runs of 2026-12-07/08: 0.42 with py-spy attached, 0.45, 0.49, 0.53). Timed per "
    "attempt (2026-12-08, 20,000 records): 8 requests are in flight all the time (19,980 of "
    "20,000 sends found 8), each takes 1.77 ms mean (p50 1.42, p99 9.6) against ~1.1 ms "
    "for the bare client's, and ~0.3 ms a record goes to the lanes between requests. The "
    "delivery process is busy ~35-50% of the burst (py-spy): the rest is the receiver, the "
    "broker (one delivery-log record per attempt) and it sharing 2 cores, where the bare "
    "client runs alone. No lane starvation: the remaining gap is CPU per request.",
    "replay into": "replay: profiled (py-spy, 60,000 events, 2026-12-04): matching 37% "
    "(decoding each event `from_kafka` 19%, `read_record` 5%, the index 7%, projection "
    "4%), the structured-mode JSON of the delivery record 26%, the merge by timestamp 11% "
    "(the order header 5%), `producer.send` 10%. Since then the JSON skips values that are "
    "their own JSON and the header lookup stops at its match: 190 -> 144 µs CPU per event. "
    "The raw read only iterates fetched records (~10 µs each); 0.25 would leave ~40 µs per "
    "event for decoding, matching, JSON and aiokafka's send (~15 µs alone). 2026-12-06: "
    "`streams.routing.readback` decodes only what matching needs and builds the JSON from "
    "the header text (same bytes), records go out as whole batches, checkpoints wait "
    "for their records while reading goes on: 20,000 events 4.0-4.6 -> 2.7-3.7 s "
    "(readback ~37 µs CPU per event: the Avro read, the Avro-to-JSON walk and json.dumps "
    "are most of it).",
    "rss: worker RSS after": "rss: measured inside the worker process (tracemalloc, "
    "sys.getallocatedblocks, RSS every 10 s over 1,000,000 backlog events): the growth was "
    "the partitioner's 65,536-key LRU cache, 18 MB while it filled (~0.2 new keys per "
    "event, full only at ~35% of the run), then as much again while it evicted, with live "
    "blocks flat: freed memory the allocators kept. Without it (the partitioner now "
    "remembers only the last key) the worker held 112 → 121 MB, live blocks flat. A short "
    "run still counts start-up buffers against its 10% point.",
}


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


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _verdict(target: float | None, met: bool | None) -> tuple[str, str]:
    """(target, met) as the table shows them; an informational figure has neither."""
    if target is None:
        return "—", "info"
    return f"≥ {target:.3g}", "yes" if met else "no"


def _line(scenario: str, seconds: float, figures: list[Figure]) -> str:
    shown = "; ".join(
        f"{f.name}: {_num(f.value)} vs {_num(f.baseline)} {f.unit} (ratio {f.ratio:.2f}, "
        f"target {_verdict(f.target, f.met)[0]} {'MISSED' if f.met is False else 'ok'})"
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
        target, met = _verdict(f["target"], f["met"])
        lines.append(
            f"| {f['name']} | {_num(f['value'])} | {_num(f['baseline'])} | {f['unit']} "
            f"| {f['ratio']:.2f} | {target} | {met} |"
        )
    missed = [f["name"] for f in result["figures"] if f["met"] is False]
    whys = {why for name in missed for prefix, why in WHY.items() if name.startswith(prefix)}
    if missed:
        lines += ["", "## Why targets are missed (profiled where a line says so)", ""]
        lines += [f"- {why}" for why in sorted(whys)] or ["- not profiled"]
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
    scenarios: Sequence[Scenario] = DEFAULT_SCENARIOS,
    size: Size | None = None,
) -> dict[str, Any]:
    """Run the scenarios; write `output` (JSON) and the same table as Markdown next to it.

    Returns what was written. `size` overrides the work QUICK or FULL implies.
    """
    started = datetime.now(UTC)
    clock = time.perf_counter()
    with broker(settings, any(s.needs_kafka for s in scenarios), progress) as (bootstrap, ver):
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
