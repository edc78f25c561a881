"""The worker-process scenarios: memory over a long stream, and scale-out over processes.

Both run `gemeentebus run --role worker` (validate and route) as subprocesses configured
the way an operator would, through environment variables, on an ingress topic of 4+
partitions, and read the processes from /proc.

- rss: one worker eats a backlog of N events; its RSS at every 10% of them out. Target:
  growth ≤ 10% from 10% (the warm-up) to 100% (ratio rss10/rss100 ≥ 1/1.1). A backlog,
  not a stream fed while it runs: fed, the backlog and the read buffers grow as the
  publisher outruns the worker, which is load, not a leak.
- scale-out: 1, 2 and 4 workers on the same amount of events, fed while they run (after a
  warm-up); throughput (publish start to last output; the bench's publisher runs
  alongside, on the same cores) and CPU cores busy. Informational (`target: null`): on a
  2-core machine the curve flattens at 2, which says how many cores there are, not how
  good the bus is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Final

from streams.bench.broker import (
    BENCH_PSEUDONYM_KEY,
    BENCH_SECRETS_KEY,
    Clock,
    delete_topics,
    namespace,
    partitions,
    publish,
    watch,
)
from streams.bench.core import BenchContext, Figure
from streams.config import ENV, Settings
from streams.contract.schemas import registry
from streams.kafka.topics import Topics, bus_topics, create_topics

__all__ = ["WORKER_COUNTS", "rss_scenario", "scale_out_scenario", "spawn", "stop"]

WORKER_COUNTS: Final = (1, 2, 4)
MIN_PARTITIONS: Final = 4
_TICKS: Final = os.sysconf("SC_CLK_TCK")
_WARM_UP: Final = 200  # events handled before the clock starts
_SETTLE_S: Final = 5.0


def rss_mb(pid: int) -> float:
    """Resident set size of a process now (VmRSS), in MB; 0 once it is gone."""
    return _status_kb(pid, "VmRSS") / 1024


def _status_kb(pid: int, field: str) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return float(line.split()[1])
    return 0.0


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes used so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def _worker_env(settings: Settings) -> dict[str, str]:
    return os.environ | {
        ENV["bootstrap"]: settings.kafka.bootstrap_servers,
        f"{ENV['prefix']}KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        f"{ENV['prefix']}KAFKA__PARTITIONS": str(settings.kafka.partitions),
        # the bench's broker is one node: its replication settings go along
        f"{ENV['prefix']}KAFKA__REPLICATION_FACTOR": str(settings.kafka.replication_factor),
        f"{ENV['prefix']}KAFKA__MIN_INSYNC_REPLICAS": str(settings.kafka.min_insync_replicas),
        f"{ENV['prefix']}KAFKA__ALLOW_SINGLE_REPLICA": str(settings.kafka.allow_single_replica),
        # the bench's own local broker speaks plaintext, on loopback
        f"{ENV['prefix']}KAFKA__ALLOW_PLAINTEXT": str(settings.kafka.allow_plaintext),
        # the bench's receivers listen on loopback, over http (`streams.delivery.sinks`)
        f"{ENV['prefix']}DELIVERY__ALLOW_HTTP": "true",
        f"{ENV['prefix']}DELIVERY__ALLOWED_PRIVATE_SINKS": '["127.0.0.0/8", "::1/128"]',
        # every process serves /health and /ready: each on a port of its own
        f"{ENV['prefix']}HTTP__PORT": "0",
        # the owners of the bench's subscriptions: routing binds each to its owner's grant
        f"{ENV['prefix']}CLIENTS": json.dumps(
            [c.model_dump(mode="json", exclude_none=True) for c in settings.clients]
        ),
        ENV["pseudonym_key"]: BENCH_PSEUDONYM_KEY,
        ENV["secrets_key"]: BENCH_SECRETS_KEY,
    }


async def spawn(
    settings: Settings, count: int, role: str = "worker"
) -> list[asyncio.subprocess.Process]:
    """`count` processes of `gemeentebus run --role <role>` on `settings`' topics."""
    command = Path(sys.executable).with_name("gemeentebus")
    return [
        await asyncio.create_subprocess_exec(
            str(command),
            "run",
            "--role",
            role,
            env=_worker_env(settings),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


async def stop(processes: list[asyncio.subprocess.Process]) -> None:
    """SIGTERM, wait (30 s at most), then SIGKILL."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            async with asyncio.timeout(30.0):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def _wide(ctx: BenchContext, role: str) -> Settings:
    assert ctx.bootstrap is not None
    settings = namespace(ctx.settings, ctx.bootstrap, role, uuid.uuid4().hex[:8])
    parts = max(MIN_PARTITIONS, settings.kafka.partitions)
    return settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"partitions": parts})}
    )


async def _run_workers(
    ctx: BenchContext,
    role: str,
    n: int,
    count: int,
    at_count: dict[float, float],
    *,
    backlog: bool = False,
) -> tuple[float, float, float]:
    """Run `count` workers over `n` ingress records published while they run.

    The workers first handle a warm-up batch and settle their group; the clock starts when
    publishing the `n` starts. `at_count` maps fractions of `n` to the workers' RSS when
    that fraction was out (filled in). Returns (CPU seconds, peak RSS in MB, seconds).

    `backlog`: the warm-up and the `n` records are published before the workers start, so
    they read a full backlog from first to last: the same load all along (a stream fed
    while it runs has a backlog that grows, and the read buffers with it). The clock then
    starts with the workers.
    """
    settings = _wide(ctx, role)
    topics = Topics(settings.kafka.topic_prefix)
    specs = bus_topics(settings.kafka, registry().types())
    events = partitions([topics.events(t) for t in registry().types()], settings.kafka.partitions)
    try:
        await create_topics(settings.kafka, specs)
        if backlog:
            async with asyncio.timeout(180.0 + n / 1000):
                await publish(settings, [topics.ingress], _WARM_UP + n)
        processes = await spawn(settings, count)
        pids = [p.pid for p in processes]

        def seen(out: int) -> None:
            for fraction in at_count:
                if out - _WARM_UP >= fraction * n and not at_count[fraction]:
                    at_count[fraction] = sum(rss_mb(pid) for pid in pids)

        try:
            if not backlog:
                async with asyncio.timeout(180.0):
                    await publish(settings, [topics.ingress], _WARM_UP)
                    await watch(settings, events, _WARM_UP, Clock(0.0))
                await asyncio.sleep(_SETTLE_S)  # later joiners' rebalances are over
            clock = Clock(time.perf_counter())
            cpu_before = cpu_s(pids)
            async with asyncio.timeout(180.0 + n / 200), asyncio.TaskGroup() as group:
                if not backlog:
                    group.create_task(publish(settings, [topics.ingress], n))
                group.create_task(watch(settings, events, _WARM_UP + n, clock, on_count=seen))
            cpu = cpu_s(pids) - cpu_before
            peak = sum(_status_kb(pid, "VmHWM") for pid in pids) / 1024
        finally:
            await stop(processes)
    finally:
        await delete_topics(settings, [s.name for s in specs])
    assert clock.done is not None
    return cpu, peak, clock.done - clock.started


async def rss_scenario(ctx: BenchContext) -> list[Figure]:
    """One worker process's RSS at 10% and at 100% of a stream of N events."""
    n = ctx.size.rss_events
    at_count = {tenth / 10: 0.0 for tenth in range(1, 11)}
    _, peak, seconds = await _run_workers(ctx, "rss", n, 1, at_count, backlog=True)
    curve = ", ".join(f"{fraction:.0%} {mb:.0f}" for fraction, mb in at_count.items())
    ctx.progress(f"  rss: {n} events in {seconds:.0f} s; RSS MB at {curve}; peak {peak:.0f} MB")
    return [
        Figure.of(
            f"rss: worker RSS after {n:,} events vs after 10% (target growth ≤ 10%)",
            value=at_count[1.0], baseline=at_count[0.1], unit="MB", target=1 / 1.1,
            higher_is_better=False,
        ),
        Figure.of(
            "rss: worker peak RSS (VmHWM) vs RSS after 10%",
            value=peak, baseline=at_count[0.1], unit="MB", target=None, higher_is_better=False,
        ),
    ]  # fmt: skip


async def scale_out_scenario(ctx: BenchContext) -> list[Figure]:
    """Validator throughput and CPU with 1, 2 and 4 worker processes (informational)."""
    n = ctx.size.scale_events
    rates: dict[int, float] = {}
    cores: dict[int, float] = {}
    for count in WORKER_COUNTS:
        cpu, _, seconds = await _run_workers(ctx, f"scale{count}", n, count, {})
        rates[count] = n / seconds
        cores[count] = cpu / seconds
    figures = []
    for count in WORKER_COUNTS:
        figures += [
            Figure.of(f"scale-out: validator throughput, {count} worker(s) vs 1",
                      value=rates[count], baseline=rates[1], unit="events/s", target=None),
            Figure.of(f"scale-out: CPU cores busy, {count} worker(s) vs 1",
                      value=cores[count], baseline=cores[1], unit="cores", target=None),
        ]  # fmt: skip
    return figures
