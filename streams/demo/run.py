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
import logging
import os
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from connectors.kafka_local import LocalKafka, free_port_range
from streams.config import ENV, ClientConfig, KafkaSettings, Settings, load_settings
from streams.contract import codec
from streams.contract.attributes import OVERLEDEN, VERHUISD, ZAAK_GEMUTEERD, partition_key
from streams.contract.envelope import CloudEvent
from streams.contract.record import KafkaRecord
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.demo.invalid import invalid_corpus
from streams.demo.receivers import Receiver
from streams.exceptions import InvalidEvent
from streams.ingress import metrics
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics
from streams.routing.sealing import new_key
from streams.runner import Bus, running_bus

__all__ = ["DemoReport", "run_demo"]

_BATCH = 50


@dataclass
class DemoReport:
    """What the demo sent and what the bus did with it."""

    sent_valid: int = 0
    sent_invalid: int = 0
    http_accepted: int = 0
    http_rejected: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)  # per type
    receivers: list[Receiver] = field(default_factory=list)
    before: tuple[Counter[str], Counter[str]] = (Counter(), Counter())
    seconds: float = 0.0


@asynccontextmanager
async def _broker(console: Console, *, secure: bool) -> AsyncIterator[dict[str, Any]]:
    """The `kafka.*` settings that reach the demo's broker: `KAFKA_BOOTSTRAP_SERVERS` (with
    the transport of the environment, as the bus reads it), else a private local broker,
    secured like `kafka up --secure` when asked (SASL_SSL, SCRAM, its admin user)."""
    if os.environ.get(ENV["bootstrap"]):
        kafka = load_settings().kafka
        console.print(f"using the Kafka cluster at {kafka.bootstrap_servers}")
        yield kafka.transport()
        return
    with tempfile.TemporaryDirectory(prefix="gemeentebus-demo-") as tmp:
        local = LocalKafka(
            data_dir=Path(tmp),
            cache_dir=load_settings().local_kafka.cache_dir,
            port=free_port_range(2),
            secure=secure,
        )
        started = time.monotonic()
        bootstrap = await asyncio.to_thread(local.up, progress=console.print)
        shape = "SASL_SSL with SCRAM-SHA-512, ACLs enforced" if secure else "plaintext"
        console.print(
            f"Kafka 4.1 (KRaft, {shape}) up on {bootstrap} in {time.monotonic() - started:.1f}s"
        )
        try:
            yield dict(local.client_settings())
        finally:
            await asyncio.to_thread(local.down)
            console.print("Kafka stopped")


def _settings(kafka: dict[str, Any], token: str, receivers: list[Receiver]) -> Settings:
    def client(name: str, secret: str, **grants: Any) -> ClientConfig:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        return ClientConfig.model_validate({"id": name, "token_sha256": digest, **grants})

    subscribers = [
        client(r.name, r.token, subscribe={"types": r.subscription["types"], "purpose": r.purpose})
        for r in receivers
    ]
    return Settings(
        mode="demo",
        kafka=KafkaSettings.single_node(**kafka, partitions=3),
        # fresh keys per demo: pseudonyms, and the seal of the webhook secrets it stores
        security={"pseudonym_key": secrets.token_hex(32), "secrets_key": new_key()},  # type: ignore[arg-type]
        http={"host": "127.0.0.1", "port": 0},  # type: ignore[arg-type]
        # Quick retries, so the failing receiver's recovery shows within the demo.
        delivery={"initial_backoff_s": 0.5, "max_backoff_s": 2.0},  # type: ignore[arg-type]
        # one publisher sends half the demo's events one by one, as fast as it can
        limits={"requests_per_s": 10_000, "burst": 10_000},  # type: ignore[arg-type]
        clients=(
            client("demo-publisher", token, publish={"types": ["*"], "sources": ["*"]}),
            *subscribers,
        ),
    )


def _receivers() -> list[Receiver]:
    def gemeente(code: str, naam: str, fail_for_s: float = 0.0) -> Receiver:
        return Receiver(
            name=f"gemeente-{code}",
            purpose=f"Basisregistratie personen: bijhouden inwoners {naam}",
            token=secrets.token_urlsafe(24),
            fail_for_s=fail_for_s,
            subscription={
                "protocol": "HTTP",
                "types": [VERHUISD, OVERLEDEN],
                "filters": [
                    {
                        "any": [
                            {"exact": {"gemeentevan": code}},
                            {"exact": {"gemeentenaar": code}},
                            {"exact": {"gemeente": code}},
                        ]
                    }
                ],
                "fields": [
                    "bsn",
                    "soort",
                    "nieuwAdres",
                    "datumAanvangAdreshouding",
                    "datumOverlijden",
                    "gemeenteVanInschrijving",
                ],
            },
        )

    return [
        gemeente("0363", "Amsterdam"),
        gemeente("0344", "Utrecht", fail_for_s=4.0),  # down for maintenance, then back
        Receiver(
            name="brp",
            purpose="BRP: landelijke verwerking",
            token=secrets.token_urlsafe(24),
            subscription={"protocol": "HTTP", "types": [VERHUISD, OVERLEDEN]},
        ),
        Receiver(
            name="zaaksysteem",
            purpose="Zaakgericht werken: archief en termijnen",
            token=secrets.token_urlsafe(24),
            subscription={
                "protocol": "HTTP",
                "types": [ZAAK_GEMUTEERD],
                "filters": [
                    {
                        "not": {
                            "any": [
                                {"exact": {"vertrouwelijkheid": "geheim"}},
                                {"exact": {"vertrouwelijkheid": "zeer_geheim"}},
                            ]
                        }
                    }
                ],
            },
        ),
    ]


async def _subscribe(url: str, receivers: list[Receiver]) -> None:
    async with aiohttp.ClientSession() as session:
        for r in receivers:
            body = {
                **r.subscription,
                "sink": r.url,
                "subscriberReference": r.name,
                "sinkCredential": {
                    "credentialType": "ACCESSTOKEN",
                    "accessToken": secrets.token_urlsafe(16),
                },
            }
            async with session.post(
                f"{url}/subscriptions", json=body, headers={"Authorization": f"Bearer {r.token}"}
            ) as response:
                answer = await response.json()
                if response.status != 201:
                    raise RuntimeError(f"subscribing {r.name} failed: {answer}")
                r.secret = answer["signingSecret"]


def _traffic(n: int, seed: int) -> list[tuple[bool, CloudEvent]]:
    """`n` events, about 5% of them invalid (every rule of the corpus in turn)."""
    today = dutch_today()
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
                    record = KafkaRecord(key=None, headers=(), value=b"not an event")
                futures.append(
                    await producer.send(
                        topic, record.value, key=record.key, headers=list(record.headers)
                    )
                )
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _metric_totals() -> tuple[Counter[str], Counter[str]]:
    accepted: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for family in metrics.metrics().registry.collect():
        for sample in family.samples:
            if sample.name == "gemeentebus_events_accepted_total":
                accepted[sample.labels["type"]] += int(sample.value)
            elif sample.name == "gemeentebus_events_rejected_total":
                rejected[sample.labels["code"]] += int(sample.value)
    return accepted, rejected


def _counts(report: DemoReport) -> tuple[Counter[str], Counter[str]]:
    """What the bus accepted and rejected since this demo began (metrics are per process)."""
    accepted, rejected = _metric_totals()
    return accepted - report.before[0], rejected - report.before[1]


def _table(title: str, report: DemoReport, receivers: list[Receiver], bus: Bus | None) -> Group:
    accepted, rejected = _counts(report)
    inputs = Table(title=title, title_justify="left")
    for column in ("input", "count"):
        inputs.add_column(column, justify="right" if column == "count" else "left")
    inputs.add_row("published", str(report.sent_valid + report.sent_invalid))
    for event_type, count in sorted(accepted.items()):
        inputs.add_row(f"accepted {event_type}", str(count))
    for code, count in rejected.most_common():
        inputs.add_row(f"rejected: {code}", str(count))
    outcomes = bus.dispatcher.counts if bus is not None and bus.dispatcher else {}
    by_name = {s.subscriber_reference: s.id for s in bus.store} if bus and bus.store else {}
    subscribers = Table()
    for column in ("subscriber", "delivered", "retried", "dead-lettered", "duplicates"):
        subscribers.add_column(column, justify="left" if column == "subscriber" else "right")
    for r in receivers:
        counts = outcomes.get(by_name.get(r.name, ""), Counter())
        subscribers.add_row(
            r.name,
            str(r.total),
            str(counts["retry"]),
            str(counts["dead_lettered"]),
            str(r.duplicates),
        )
    return Group(inputs, subscribers)


async def _settled(
    receivers: list[Receiver],
    report: DemoReport,
    expected: int,
    live: Live,
    bus: Bus,
    deadline: float,
) -> None:
    """Wait until every input was judged, nothing is waiting for a retry, and deliveries
    stopped changing for 3 s."""
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        live.update(_table("gemeentebus demo: live", report, receivers, bus))
        judged = sum(sum(c.values()) for c in _counts(report))
        delivered = sum(r.total for r in receivers)
        if delivered != last:
            last, quiet_since = delivered, time.monotonic()
        elif (
            judged >= expected
            and time.monotonic() - quiet_since > 3.0
            and (bus.dispatcher is None or bus.dispatcher.pending == 0)
        ):
            return
        await asyncio.sleep(0.25)


async def run_demo(events: int = 2000, seed: int = 2026, *, secure: bool = False) -> DemoReport:
    """Run the demo end to end; returns what happened (the CLI prints it). `secure`: on a
    private broker secured like `kafka up --secure`."""
    console = Console()
    report = DemoReport()
    # The broker's start-up chatter (leader elections) is no news in a demo.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    token = secrets.token_urlsafe(24)
    receivers = _receivers()
    report.before = _metric_totals()
    for r in receivers:
        await r.start()
    try:
        async with _broker(console, secure=secure) as kafka:
            settings = _settings(kafka, token, receivers)
            async with running_bus(settings) as bus:
                console.print(
                    f"bus running: API on {bus.url}; validating and routing worker, "
                    "webhook dispatcher on the local broker"
                )
                await _subscribe(bus.url, receivers)
                console.print(
                    "subscribed: "
                    + ", ".join(r.name for r in receivers)
                    + " (each passed the callback check)"
                )
                traffic = _traffic(events, seed)
                report.sent_valid = sum(1 for ok, _ in traffic if ok)
                report.sent_invalid = len(traffic) - report.sent_valid
                half = len(traffic) // 2
                started = time.monotonic()
                with Live(
                    _table("gemeentebus demo: live", report, receivers, bus),
                    console=console,
                    refresh_per_second=4,
                ) as live:
                    await asyncio.gather(
                        _send_http(bus.url, token, traffic[:half], report),
                        _send_kafka(settings, traffic[half:]),
                    )
                    await _settled(receivers, report, len(traffic), live, bus, started + 180)
                    report.seconds = time.monotonic() - started
                report.accepted = _counts(report)[0]
                report.receivers = receivers
                console.print(_table(f"summary ({report.seconds:.1f}s)", report, receivers, bus))
    finally:
        for r in receivers:
            await r.stop()
    console.print("everything the demo started is stopped")
    return report
