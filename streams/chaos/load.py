"""The chaos suite's publishers: half the events over HTTP (`POST /events`), half into Kafka.

Each channel has its own seeded `EventFactory`, so every order key (a person, a zaak) is
published through one channel only, in one sequence: per-key order is the bus's to keep.
HTTP sends batches one after another and counts the ids of every 202 as accepted; a failed
batch (503, a dead API, a timeout) is sent again, whole, until the deadline. Kafka sends a
batch through an idempotent producer (acks=all) and counts every acked record as accepted;
the records that failed are sent again (a fresh producer each time: an idempotent one that
lost batches may never send again). Both pace themselves to the rate asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiokafka.errors import KafkaError

from streams.chaos.bus import PUBLISHER, token
from streams.chaos.checker import Ledger, Sent
from streams.config import KafkaSettings
from streams.contract import codec
from streams.contract.attributes import partition_key
from streams.contract.envelope import CloudEvent
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.kafka.clients import Producer, make_producer
from streams.kafka.topics import Topics

__all__ = ["Load", "order_key"]

log = logging.getLogger(__name__)

_ORDER_SECRET: Final = b"chaos-order-key"
_RETRY_S: Final = 0.5
_BATCH: Final = 20


def order_key(channel: str, event: CloudEvent) -> str:
    """The key whose order the bus keeps, as a pseudonym (never a BSN), per channel."""
    return f"{channel}:{partition_key(event.type, event.data, _ORDER_SECRET).decode()}"


@dataclass
class Load:
    """Publishes `http_n` events over HTTP and `kafka_n` into ingress at `rate` events/s."""

    ledger: Ledger
    api_url: Callable[[], str]
    bootstrap: str
    prefix: str
    http_n: int
    kafka_n: int
    rate: float
    seed: int = 1
    deadline_s: float = 600.0  # give up resending after this long (the run is then broken)
    http_failures: int = 0
    kafka_failures: int = 0
    rejected: int = 0
    _prepared: tuple[list[CloudEvent], list[CloudEvent]] | None = None
    _give_up: float = 0.0

    def events(self, channel: str, n: int) -> list[CloudEvent]:
        offset = 0 if channel == "http" else 1
        events = EventFactory(self.seed * 2 + offset, today=dutch_today()).mixed(n)
        for event in events:
            self.ledger.offer(
                Sent(event.id, event.source, event.type, order_key(channel, event), channel)
            )
        return events

    def prepare(self) -> tuple[list[CloudEvent], list[CloudEvent]]:
        """The events of each channel (http, kafka), made and offered once."""
        if self._prepared is None:
            self._prepared = self.events("http", self.http_n), self.events("kafka", self.kafka_n)
        return self._prepared

    async def run(self) -> None:
        """Publish everything (both channels at once); returns when all is accepted or given up."""
        http, kafka = self.prepare()
        self._give_up = time.monotonic() + self.deadline_s
        async with asyncio.TaskGroup() as group:
            if http:
                group.create_task(self._http(http))
            if kafka:
                group.create_task(self._kafka(kafka))

    def _interval(self, channels: int) -> float:
        return _BATCH / (self.rate / channels)

    def _channels(self) -> int:
        return (1 if self.http_n else 0) + (1 if self.kafka_n else 0)

    async def _http(self, events: list[CloudEvent]) -> None:
        interval, began = self._interval(self._channels()), time.monotonic()
        headers = {"Authorization": f"Bearer {token(PUBLISHER)}"}
        timeout = aiohttp.ClientTimeout(total=30.0)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            for number, start in enumerate(range(0, len(events), _BATCH)):
                await _until(began + number * interval)
                await self._post(session, events[start : start + _BATCH])

    async def _post(self, session: aiohttp.ClientSession, batch: list[CloudEvent]) -> None:
        body = [codec.to_json(e) for e in batch]
        while time.monotonic() < self._give_up:
            try:
                async with session.post(
                    self.api_url() + "/events",
                    json=body,
                    headers={"Content-Type": codec.BATCH_CONTENT_TYPE},
                ) as response:
                    answer = await response.json(content_type=None)
                    if response.status == 202:
                        for event_id in answer["ids"]:
                            self.ledger.accept(event_id)
                        return
                    if response.status == 400:
                        self.rejected += len(batch)
                        log.warning("chaos: the bus rejected a batch: %s", answer)
                        return
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
                pass
            self.http_failures += 1
            await asyncio.sleep(_RETRY_S)

    async def _kafka(self, events: list[CloudEvent]) -> None:
        interval, began = self._interval(self._channels()), time.monotonic()
        topic = Topics(self.prefix).ingress
        records = [
            codec.to_kafka(e, key=partition_key(e.type, e.data, _ORDER_SECRET)) for e in events
        ]
        producer = await self._producer()
        try:
            for number, start in enumerate(range(0, len(events), _BATCH)):
                await _until(began + number * interval)
                pending = list(range(start, min(start + _BATCH, len(events))))
                while pending and time.monotonic() < self._give_up:
                    failed: list[int] = []
                    try:
                        futures = [
                            await producer.send(
                                topic, records[i].value, key=records[i].key,
                                headers=list(records[i].headers),
                            )
                            for i in pending
                        ]  # fmt: skip
                        results = await asyncio.gather(*futures, return_exceptions=True)
                    except (KafkaError, OSError):
                        results = [RuntimeError("not sent")] * len(pending)
                    for i, result in zip(pending, results, strict=False):
                        if isinstance(result, BaseException):
                            failed.append(i)
                        else:
                            self.ledger.accept(events[i].id)
                    failed += pending[len(results) :]
                    if failed:
                        self.kafka_failures += 1
                        await _stop(producer)
                        await asyncio.sleep(_RETRY_S)
                        producer = await self._producer()
                    pending = failed
        finally:
            await _stop(producer)

    async def _producer(self) -> Producer:
        while True:
            # The suite's own brokers speak plaintext on loopback.
            kafka = KafkaSettings(bootstrap_servers=self.bootstrap)
            producer = make_producer(
                kafka, "chaos-publisher", request_timeout_ms=10_000, linger_ms=5
            )
            try:
                await producer.start()
                return producer
            except (KafkaError, OSError):
                await _stop(producer)
                if time.monotonic() >= self._give_up:
                    raise
                await asyncio.sleep(_RETRY_S)


async def _until(moment: float) -> None:
    ahead = moment - time.monotonic()
    if ahead > 0:
        await asyncio.sleep(ahead)


async def _stop(producer: Producer) -> None:
    with contextlib.suppress(KafkaError, OSError, TimeoutError):  # a broken one: let it go
        async with asyncio.timeout(15.0):
            await producer.stop()
