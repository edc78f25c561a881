"""`gemeentebus demo`: the whole bus on a local broker, with realistic traffic, then a summary.

It starts a private Kafka broker (or uses `KAFKA_BOOTSTRAP_SERVERS`), the bus (API and
validating worker), publishes a stream of moves, deaths and zaak updates — some invalid —
half over HTTP and half straight into Kafka, shows live counts, prints a summary table,
and stops everything it started.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.live import Live
from rich.table import Table

from connectors.kafka_local import LocalKafka, free_port_range
from streams import codec, metrics
from streams.app import make_producer
from streams.attributes import partition_key
from streams.config import ENV, ClientConfig, KafkaSettings, Settings
from streams.envelope import CloudEvent
from streams.exceptions import InvalidEvent
from streams.generators import EventFactory, invalid_corpus
from streams.runner import running_bus
from streams.topics import Topics

__all__ = ["DemoReport", "run_demo"]

_BATCH = 50


@dataclass
class DemoReport:
    """What the demo sent and what the bus did with it."""

    sent_valid: int = 0
    sent_invalid: int = 0
    http_accepted: int = 0
    http_rejected: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


@asynccontextmanager
async def _broker(console: Console) -> AsyncIterator[str]:
    existing = os.environ.get(ENV["bootstrap"])
    if existing:
        console.print(f"using the Kafka cluster at {existing}")
        yield existing
        return
    with tempfile.TemporaryDirectory(prefix="gemeentebus-demo-") as tmp:
        from streams.config import load_settings

        kafka = LocalKafka(
            data_dir=Path(tmp),
            cache_dir=load_settings().local_kafka.cache_dir,
            port=free_port_range(2),
        )
        started = time.monotonic()
        bootstrap = await asyncio.to_thread(kafka.up, progress=console.print)
        console.print(f"Kafka 4.1 (KRaft) up on {bootstrap} in {time.monotonic() - started:.1f}s")
        try:
            yield bootstrap
        finally:
            await asyncio.to_thread(kafka.down)
            console.print("Kafka stopped")


def _settings(bootstrap: str, token: str) -> Settings:
    return Settings(
        mode="demo",
        kafka=KafkaSettings(bootstrap_servers=bootstrap, partitions=3),
        security={"pseudonym_key": secrets.token_hex(32)},  # type: ignore[arg-type]
        http={"host": "127.0.0.1", "port": 0},  # type: ignore[arg-type]
        clients=(
            ClientConfig(
                id="demo-publisher",
                token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                publish={"types": ["*"], "sources": ["*"]},  # type: ignore[arg-type]
            ),
        ),
    )


def _traffic(n: int, seed: int) -> list[tuple[bool, CloudEvent]]:
    """`n` events, about 5% of them invalid (every rule of the corpus in turn)."""
    today = date.today()
    valid = EventFactory(seed, today=today).mixed(n - n // 20)
    corpus = [event for _, event in invalid_corpus(seed, today=today)]
    traffic = [(True, e) for e in valid]
    for i in range(n // 20):
        traffic.insert((i * 20 + 7) % (len(traffic) + 1), (False, corpus[i % len(corpus)]))
    return traffic


async def _send_http(
    url: str, token: str, events: list[tuple[bool, CloudEvent]], report: DemoReport
) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": codec.STRUCTURED_CONTENT_TYPE}
    async with aiohttp.ClientSession(headers=headers) as session:
        for _, event in events:
            try:
                body: Any = codec.to_json(event)
            except InvalidEvent:
                body = {
                    "specversion": "1.0",
                    "id": event.id,
                    "source": event.source,
                    "type": event.type,
                    "data": dict(event.data),
                }
            # default=str: a broken event may carry values JSON has no type for
            payload = json.dumps(body, default=str)
            async with session.post(f"{url}/events", data=payload, headers=headers) as response:
                answer = await response.json(content_type=None)
                if response.status == 202:
                    report.http_accepted += 1
                else:
                    first = (answer.get("errors") or [{}])[0].get("code", str(response.status))
                    report.http_rejected[first] += 1


async def _send_kafka(settings: Settings, events: list[tuple[bool, CloudEvent]]) -> None:
    producer = make_producer(settings, "demo-publisher")
    await producer.start()
    topic = Topics(settings.kafka.topic_prefix).ingress
    try:
        for start in range(0, len(events), _BATCH):
            futures = []
            for _, event in events[start : start + _BATCH]:
                try:
                    key = partition_key(event.type, event.data, b"demo-publisher")
                    record = codec.to_kafka(event, key=key)
                except (InvalidEvent, KeyError, TypeError, ValueError):
                    record = codec.KafkaRecord(key=None, headers=(), value=b"not an event")
                futures.append(
                    await producer.send(
                        topic, record.value, key=record.key, headers=list(record.headers)
                    )
                )
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _counts() -> tuple[Counter[str], Counter[str]]:
    accepted: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for family in metrics.bus().registry.collect():
        for sample in family.samples:
            if sample.name == "gemeentebus_events_accepted_total":
                accepted[sample.labels["type"]] += int(sample.value)
            elif sample.name == "gemeentebus_events_rejected_total":
                rejected[sample.labels["code"]] += int(sample.value)
    return accepted, rejected


def _table(title: str, report: DemoReport) -> Table:
    accepted, rejected = _counts()
    table = Table(title=title)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("published (valid)", str(report.sent_valid))
    table.add_row("published (invalid, on purpose)", str(report.sent_invalid))
    for event_type, count in sorted(accepted.items()):
        table.add_row(f"accepted  {event_type}", str(count))
    for code, count in rejected.most_common():
        table.add_row(f"rejected  {code}", str(count))
    return table


async def run_demo(events: int = 2000, seed: int = 2026) -> DemoReport:
    """Run the demo end to end; returns what happened (the CLI prints it)."""
    console = Console()
    report = DemoReport()
    token = secrets.token_urlsafe(24)
    async with _broker(console) as bootstrap:
        settings = _settings(bootstrap, token)
        async with running_bus(settings) as bus:
            console.print(f"bus running: API on {bus.url}, validating worker on the ingress topic")
            traffic = _traffic(events, seed)
            report.sent_valid = sum(1 for ok, _ in traffic if ok)
            report.sent_invalid = len(traffic) - report.sent_valid
            half = len(traffic) // 2
            started = time.monotonic()
            sending = asyncio.gather(
                _send_http(bus.url, token, traffic[:half], report),
                _send_kafka(settings, traffic[half:]),
            )
            with Live(
                _table("gemeentebus demo: live", report), console=console, refresh_per_second=4
            ) as live:
                while not sending.done() or sum(sum(c.values()) for c in _counts()) < len(traffic):
                    live.update(_table("gemeentebus demo: live", report))
                    await asyncio.sleep(0.25)
                    if time.monotonic() - started > 120:
                        break
                await sending
                report.seconds = time.monotonic() - started
                live.update(_table("gemeentebus demo: live", report))
        console.print(_table(f"summary ({report.seconds:.1f}s)", report))
    return report
