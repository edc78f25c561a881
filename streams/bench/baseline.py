"""The baseline scenario: Kafka's own performance tools, the physical ceiling of this broker.

`ProducerPerformance` and `ConsumerPerformance` (the kafka-tools jar of the local broker's
cache) write and read ~1 KB records on one topic; raw aiokafka does the same on another, in
the same run. The figures are informational (no target): they say how much of what the
broker can take a Python client gets, which bounds every other scenario.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import shutil
import time
import uuid
from typing import Final

from connectors.kafka_local import fetch_jars
from streams.bench.broker import delete_topics, namespace, raw_read_seconds
from streams.bench.core import BenchContext, Figure
from streams.config import Settings
from streams.kafka.clients import make_producer
from streams.kafka.topics import TopicSpec, create_topics

__all__ = ["RECORD_BYTES", "baseline_scenario", "consumer_rate", "producer_rate"]

RECORD_BYTES: Final = 1024
_TOOLS: Final = "org.apache.kafka.tools"
_PRODUCED = re.compile(r"(\d+) records sent, ([\d.]+) records/sec")


def producer_rate(output: str) -> float:
    """Records/s from ProducerPerformance's summary line (the last one)."""
    found = _PRODUCED.findall(output)
    if not found:
        raise RuntimeError(f"no ProducerPerformance summary in: {output[-300:]!r}")
    return float(found[-1][1])


def consumer_rate(output: str) -> float:
    """Records/s of fetching (rebalance time left out) from ConsumerPerformance's CSV."""
    lines = [line for line in output.splitlines() if "," in line]
    header = next(i for i, line in enumerate(lines) if line.startswith("start.time"))
    row = next(csv.DictReader(io.StringIO("\n".join(lines[header : header + 2]))))
    return float(row[" fetch.nMsg.sec"] if " fetch.nMsg.sec" in row else row["fetch.nMsg.sec"])


async def _java(classpath: str, tool: str, *args: str, within: float) -> str:
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java not found: the baseline needs Kafka's tools")
    process = await asyncio.create_subprocess_exec(
        java, "-Xmx512m", "-cp", classpath, f"{_TOOLS}.{tool}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(within):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"{tool} failed ({process.returncode}): {out.decode()[-300:]!r}")
    return out.decode()


async def _aiokafka_rates(settings: Settings, topic: str, n: int) -> tuple[float, float]:
    """(produce, consume) records/s of raw aiokafka on `topic`, ~1 KB records, acks=all."""
    value = os.urandom(RECORD_BYTES)
    producer = make_producer(settings, "bench-baseline")
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [await producer.send(topic, value) for _ in range(n)]
        await asyncio.gather(*futures)
        produced = n / (time.perf_counter() - started)
    finally:
        await producer.stop()
    consumed = n / await raw_read_seconds(settings, [topic], n)
    return produced, consumed


async def baseline_scenario(ctx: BenchContext) -> list[Figure]:
    """Raw aiokafka produce and consume next to Kafka's own tools, ~1 KB records."""
    assert ctx.bootstrap is not None
    n = ctx.size.baseline_records
    settings = namespace(ctx.settings, ctx.bootstrap, "baseline", uuid.uuid4().hex[:8])
    prefix, parts = settings.kafka.topic_prefix, settings.kafka.partitions
    tools_topic, client_topic = f"{prefix}.tools", f"{prefix}.aiokafka"
    libs = await asyncio.to_thread(fetch_jars, ctx.settings.local_kafka.cache_dir)
    classpath, within = f"{libs}/*", 120.0 + n / 1_000
    try:
        await create_topics(settings.kafka, [TopicSpec(tools_topic, parts),
                                             TopicSpec(client_topic, parts)])  # fmt: skip
        produced = await _java(
            classpath, "ProducerPerformance", "--topic", tools_topic,
            "--num-records", str(n), "--record-size", str(RECORD_BYTES), "--throughput", "-1",
            "--producer-props", f"bootstrap.servers={ctx.bootstrap}", "acks=all",
            within=within,
        )  # fmt: skip
        consumed = await _java(
            classpath, "ConsumerPerformance", "--bootstrap-server", ctx.bootstrap,
            "--topic", tools_topic, "--messages", str(n), within=within,
        )  # fmt: skip
        client_produce, client_consume = await _aiokafka_rates(settings, client_topic, n)
    finally:
        await delete_topics(settings, [tools_topic, client_topic])
    return [
        Figure.of(
            "baseline: aiokafka produce vs Kafka ProducerPerformance (1 KB, acks=all)",
            value=client_produce,
            baseline=producer_rate(produced),
            unit="records/s",
            target=None,
        ),
        Figure.of(
            "baseline: aiokafka consume vs Kafka ConsumerPerformance (1 KB)",
            value=client_consume,
            baseline=consumer_rate(consumed),
            unit="records/s",
            target=None,
        ),
    ]
