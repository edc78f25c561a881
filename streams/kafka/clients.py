"""Every Kafka client of the bus: the Faust application, producers, consumers, admin clients.

This module is the only place a Kafka client is made (a test checks it), so every client
gets the configured transport (TLS, SASL: `streams.kafka.transport.security_options`, and
for Faust `faust_credentials` as its `broker_credentials`).

Faust is used for what it is good at: consumer groups, partition assignment and offset
commits. Producing goes through our own idempotent aiokafka producer (`acks=all`), whose
futures the agents await before a source message is acked (Faust's producer is only
idempotent inside transactions, and its `send()` returns before the broker has the record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import faust
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streams.config import KafkaSettings, Settings
from streams.kafka import faustparts, lenient
from streams.kafka.partitioner import KeyPartitioner
from streams.kafka.transport import faust_credentials, security_options
from streams.retry import refused_for_size, spoils_producer

__all__ = [
    "MAX_REQUEST_BYTES",
    "EventBatches",
    "Producer",
    "Writable",
    "fits",
    "make_admin",
    "make_app",
    "make_client",
    "make_consumer",
    "make_producer",
    "send_all",
    "send_each",
]

log = logging.getLogger(__name__)

# aiokafka's default `max_request_size` (make_producer keeps it): its `send` refuses more.
MAX_REQUEST_BYTES = 1024 * 1024


def fits(record: Writable) -> bool:
    """Whether the producer takes `record` (aiokafka's own size estimate, before sending)."""
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
        record.key, record.value, list(record.headers)
    )
    return bool(size <= MAX_REQUEST_BYTES)


class Writable(Protocol):
    """What a producer writes: a `KafkaRecord`, or a dead letter that keeps null headers."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...
    @property
    def value(self) -> bytes | None: ...


def _kafka(settings: Settings | KafkaSettings) -> KafkaSettings:
    return settings.kafka if isinstance(settings, Settings) else settings


def _kafka_url(bootstrap: str) -> list[str]:
    return [f"kafka://{server.strip()}" for server in bootstrap.split(",") if server.strip()]


def make_app(settings: Settings, name: str, **overrides: Any) -> faust.App:
    """A Faust app whose consumer group is `<topic prefix>.<name>`.

    Safe defaults: no web server (Faust's `/table/` views are unauthenticated), no
    auto-created internal topics beyond Faust's own, start at the earliest offset for a new
    group, commit often. Faust's data directory (empty: tables live in memory) goes under the
    system's temporary directory, not into whatever directory the process was started in.
    """
    lenient.install()  # a header name that is not UTF-8 is a dead letter, not a dead fetcher
    app_id = f"{settings.kafka.topic_prefix}.{name}"
    datadir = Path(tempfile.gettempdir()) / f"gemeentebus-faust-{os.getuid()}"  # one per user
    datadir.mkdir(mode=0o700, exist_ok=True)
    options: dict[str, Any] = {
        "broker": _kafka_url(settings.kafka.bootstrap_servers),
        "broker_client_id": f"{settings.kafka.client_id}-{name}",
        "broker_credentials": faust_credentials(settings.kafka),
        "web_enabled": False,
        "web_tables_enabled": False,
        "consumer_auto_offset_reset": "earliest",
        "topic_replication_factor": settings.kafka.replication_factor,
        "topic_partitions": settings.kafka.partitions,
        "topic_disable_leader": True,
        "broker_commit_interval": 1.0,
        # A SIGKILLed worker's partitions wait this long for another member (Faust: 60 s).
        "broker_session_timeout": 20.0,
        "producer_acks": -1,
        "autodiscover": False,
        "store": "memory://",
        "table_cleanup_interval": 3600.0,
        "datadir": datadir / f"{app_id}-data",
        # less work per message and no second's wait at start (`streams.kafka.faustparts`)
        "TableManager": faustparts.Tableless,
        "Monitor": faustparts.LeanMonitor,
    }
    options.update(overrides)
    app = faust.App(app_id, **options)
    app.transport = faustparts.Transport(app.conf.broker_consumer, app)
    return app


def make_producer(settings: Settings | KafkaSettings, name: str, **overrides: Any) -> Producer:
    """An idempotent producer (`acks=all`, ordered per partition); call `start()` on it."""
    kafka = _kafka(settings)
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": f"{kafka.client_id}-{name}",
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 0,
        "max_batch_size": 256 * 1024,
        "partitioner": KeyPartitioner(),
        "request_timeout_ms": int(kafka.request_timeout_s * 1000),
        **security_options(kafka),
    }
    options.update(overrides)
    return Producer(options)


def _appended(batch: Any, record: Writable, headers: list[tuple[str, bytes | None]]) -> bool:
    found = batch.append(timestamp=None, key=record.key, value=record.value, headers=headers)
    return found is not None


class Producer:
    """An idempotent aiokafka producer that replaces its client once the client is spoiled.

    aiokafka 0.14 expires an idempotent client's batch only while its partition has no leader
    (for longer than `request_timeout_ms`: its future fails with `LeaderNotAvailableError`),
    and the expired batch used up its sequence numbers: once the leader is back the broker
    refuses every later batch of that client to that partition (`OutOfOrderSequenceNumber`,
    for good; tests/streams/kafka/test_producer_spoiled.py). The first send after any
    spoiling error (`streams.retry.spoils_producer`) therefore stops the old client and
    starts a new one (a new producer id, sequences from zero). The records that failed are
    the caller's to send again: their futures raised, so they were never acked. `replaced`
    counts the replacements (a gauge of trouble, not of progress).
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._client = AIOKafkaProducer(**options)
        self._started = False
        self._spoiled: BaseException | None = None
        self._replacing: asyncio.Future[None] | None = None
        self.replaced = 0

    @property
    def client(self) -> Any:
        """aiokafka's client of the current producer (cluster metadata, readiness)."""
        return self._client.client

    @property
    def spoiled(self) -> BaseException | None:
        """The error that spoiled the current client, until it is replaced."""
        return self._spoiled

    @property
    def running(self) -> bool:
        """Started, not stopped, and its sender task alive (aiokafka has no public state)."""
        sender = getattr(getattr(self._client, "_sender", None), "sender_task", None)
        return self._started and sender is not None and not sender.done()

    async def start(self) -> None:
        await self._client.start()
        self._started = True

    async def stop(self) -> None:
        self._started = False
        if self._replacing is not None and not self._replacing.done():
            self._replacing.cancel()  # no new client after the stop
            await asyncio.wait([self._replacing])
        await self._client.stop()

    async def flush(self) -> None:
        """Wait until every record queued so far was sent (confirmed or failed)."""
        await self._client.flush()

    @property
    def idempotent(self) -> bool:
        return bool(self._options.get("enable_idempotence"))

    def create_batch(self) -> Any:
        """aiokafka's `create_batch`: an empty batch to fill and `send_batch`."""
        return self._client.create_batch()

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        """aiokafka's `send_batch`: the future is done once the broker has the batch."""
        future: asyncio.Future[Any] = await self._client.send_batch(
            batch, topic, partition=partition
        )
        return future

    async def send_batched(
        self, topic: str, records: Sequence[Writable]
    ) -> list[asyncio.Future[Any]]:
        """Queue records for one topic as whole batches, a partition at a time (the
        partitioner's choice by key, as `send` makes it): a fraction of `send`'s cost per
        record. Per partition the records keep their order. Returns a future per batch,
        done once the broker has it (raises when not confirmed)."""
        if not records:
            return []
        if self._spoiled is not None:
            await self._replace()
        client = self._client
        partitions = sorted(await self.partitions_for(topic))
        choose = self._options["partitioner"]
        groups: dict[int, list[Writable]] = {}
        for record in records:
            groups.setdefault(choose(record.key, partitions, partitions), []).append(record)
        futures: list[asyncio.Future[Any]] = []
        for partition, group in groups.items():
            batch = client.create_batch()
            for record in group:
                headers = list(record.headers)
                if _appended(batch, record, headers):
                    continue
                if batch.record_count():  # full: it goes, the record starts the next one
                    futures.append(await client.send_batch(batch, topic, partition=partition))
                    batch = client.create_batch()
                    if _appended(batch, record, headers):
                        continue
                # larger than a batch: `send` takes it alone, or refuses it with the reason
                futures.append(
                    await client.send(
                        topic, record.value, key=record.key, headers=headers, partition=partition
                    )
                )
                batch = client.create_batch()
            if batch.record_count():
                futures.append(await client.send_batch(batch, topic, partition=partition))
        for future in futures:
            future.add_done_callback(lambda done: self._check(client, done))
        return futures

    async def partitions_for(self, topic: str) -> set[int]:
        partitions: set[int] = await self._client.partitions_for(topic)
        return partitions

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one record; returns a future of its metadata (raises when not confirmed)."""
        if self._spoiled is not None:
            await self._replace()
        future: asyncio.Future[Any] = await self._client.send(
            topic,
            value,
            key=key,
            headers=None if headers is None else list(headers),
            partition=partition,
        )
        client = self._client
        future.add_done_callback(lambda done: self._check(client, done))
        return future

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
        partition: int | None = None,
    ) -> Any:
        """Send one record and return its metadata once the broker has it."""
        future = await self.send(topic, value, key, headers=headers, partition=partition)
        return await future

    def _check(self, client: AIOKafkaProducer, done: asyncio.Future[Any]) -> None:
        if done.cancelled() or client is not self._client:
            return
        error = done.exception()
        if error is not None and spoils_producer(error) and self._spoiled is None:
            self._spoiled = error
            log.warning(
                "producer %s is spoiled (%s): replacing it",
                self._options.get("client_id"),
                type(error).__name__,
            )

    async def _replace(self) -> None:
        """Wait for the client's replacement, starting it if none runs. It runs as a task of
        its own: a caller cut off meanwhile (an HTTP request's timeout) cuts off its own wait,
        not the old client's stop halfway or the new client's start. Only a started client
        replaces the old one; a start that fails leaves the producer spoiled, so the next
        send tries again instead of queueing into a client that never runs."""
        if self._replacing is None or self._replacing.done():
            self._replacing = asyncio.ensure_future(self._renew())
            self._replacing.add_done_callback(_retrieved)
        await asyncio.shield(self._replacing)

    async def _renew(self) -> None:
        if self._spoiled is None:
            return
        with contextlib.suppress(Exception):  # the old client is broken: close what closes
            await asyncio.wait_for(self._client.stop(), timeout=5.0)
        fresh = AIOKafkaProducer(**self._options)
        try:
            await fresh.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await fresh.stop()
            raise
        self._client, self._spoiled = fresh, None
        self.replaced += 1


def _retrieved(task: asyncio.Future[None]) -> None:
    """Mark a replacement's error seen: every caller waiting for it may have been cut off (it
    is raised to each caller that waited, and the next send tries again)."""
    if not task.cancelled():
        task.exception()


def make_consumer(
    settings: Settings | KafkaSettings,
    name: str,
    *topics: str,
    group: str | None = None,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """A consumer that commits only by hand, starts a new group (or a group-less reader) at
    the earliest offset and long-polls at most 100 ms; subscribed to `topics` when given,
    else to be assigned or subscribed; call `start()` on it. Batches holding a header name
    that is not UTF-8 are read (`streams.kafka.lenient`), not fatal."""
    lenient.install()
    kafka = _kafka(settings)
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": f"{kafka.client_id}-{name}",
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": 100,
        "request_timeout_ms": int(kafka.request_timeout_s * 1000),
        **security_options(kafka),
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def _connection(kafka: KafkaSettings, name: str) -> dict[str, Any]:
    """What every bare client (admin, cluster) is given: where, who, how long, how secured."""
    return {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": f"{kafka.client_id}-{name}",
        "request_timeout_ms": int(kafka.request_timeout_s * 1000),
        **security_options(kafka),
    }


def make_admin(
    settings: Settings | KafkaSettings, name: str = "admin", **overrides: Any
) -> AIOKafkaAdminClient:
    """An admin client (topics, configs, partitions); call `start()` and `close()` on it."""
    options = {**_connection(_kafka(settings), name), **overrides}
    return AIOKafkaAdminClient(**options)


def make_client(settings: Settings | KafkaSettings, name: str, **overrides: Any) -> AIOKafkaClient:
    """A bare cluster client (metadata and single requests, e.g. the cluster watch); call
    `bootstrap()` and `close()` on it."""
    options = {**_connection(_kafka(settings), name), **overrides}
    return AIOKafkaClient(**options)


async def send_all(producer: Producer, outputs: Iterable[tuple[str, Writable]]) -> None:
    """Send every (topic, record) in order; return once the broker has all of them, or raise
    the first error (after every queued record was settled, confirmed or failed).

    With `acks=all` and idempotence, records to one partition land in the order sent.
    """
    for error in await send_each(producer, outputs):
        if error is not None:
            raise error


async def send_each(
    producer: Producer, outputs: Iterable[tuple[str, Writable]]
) -> list[BaseException | None]:
    """Send every (topic, record) in order and wait for all; per record its error or None.

    A record that `send` refuses at once (too large) gets its error and the rest is still
    sent; any other error of `send` (no metadata, a stopped producer) stops sending: that
    record and every later one get it. The caller decides what a failure means; a record
    with an error was not written (or, after a timeout, maybe written: send it again).
    """
    items = list(outputs)
    futures: list[asyncio.Future[Any] | None] = []
    errors: list[BaseException | None] = [None] * len(items)
    for index, (topic, record) in enumerate(items):
        try:
            futures.append(
                await producer.send(topic, record.value, key=record.key, headers=record.headers)
            )
        except Exception as exc:  # noqa: BLE001 - handed to the caller, per record
            futures.append(None)
            errors[index] = exc
            if not refused_for_size(exc):
                errors[index + 1 :] = [exc] * (len(items) - index - 1)
                break
    settled = await asyncio.gather(*(f for f in futures if f is not None), return_exceptions=True)
    results = iter(settled)
    for index, future in enumerate(futures):
        if future is not None:
            result = next(results)
            if isinstance(result, BaseException):
                errors[index] = result
    return errors


# Loop turns without a new event after which a batch goes: an event takes a few turns
# from the fetcher to the pump (Faust's conductor, the channel's queue).
_IDLE_TURNS: Final = 3


class EventBatches:
    """A Faust stream read in batches of whatever has arrived, acked by hand.

    Unlike `Stream.noack_take`, no batch waits for a window to close: the first event that
    arrives after a batch was taken starts the next one at once, and while a batch is being
    handled (validated, produced, confirmed) the events arriving meanwhile gather for the
    next. Before a batch goes, the pump gets a few loop turns (no timer) to take what the
    stream already holds: quiet input gives batches of one at the latency of one, a backlog
    gives batches of `max_size` (without them, batches of ~10 while Faust hands events on one
    at a time, each batch paying a subscription sync and a produce round trip). Nothing is
    acked here: `ack` the events of a batch once their outputs are
    confirmed.
    """

    def __init__(self, stream: faust.StreamT[Any], max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._stream = stream.noack()  # type: ignore[attr-defined]
        self._max = max_size
        self._arrived: list[faust.EventT[Any]] = []
        self._more = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def ack(self, events: Iterable[faust.EventT[Any]]) -> None:
        for event in events:
            await self._stream.ack(event)

    def __aiter__(self) -> AsyncIterator[list[faust.EventT[Any]]]:
        return self._batches()

    async def _pump(self) -> None:
        async for event in self._stream.events():
            self._arrived.append(event)
            self._more.set()
            while len(self._arrived) >= self._max:  # hold the stream: a batch is full
                self._room.clear()
                await self._room.wait()

    def _buffered(self) -> int:
        """What the stream's channel holds that the pump has not taken yet."""
        queue = getattr(self._stream.channel, "queue", None)
        return 0 if queue is None else int(queue.qsize())

    async def _gather(self) -> None:
        """Let the pump take what the stream already holds, up to a full batch: a backlog
        makes full batches, quiet input still goes at once (one loop turn)."""
        idle = 0
        while len(self._arrived) < self._max and idle < _IDLE_TURNS:
            before = len(self._arrived)
            await asyncio.sleep(0)
            idle = 0 if len(self._arrived) > before or self._buffered() else idle + 1

    async def _batches(self) -> AsyncIterator[list[faust.EventT[Any]]]:
        pump = asyncio.create_task(self._pump(), name="event-batches")
        try:
            while True:
                if not self._arrived:
                    arrival = asyncio.ensure_future(self._more.wait())
                    await asyncio.wait({pump, arrival}, return_when=asyncio.FIRST_COMPLETED)
                    if pump.done():
                        arrival.cancel()
                        pump.result()  # the stream's error, if it failed
                        return
                await self._gather()
                self._more.clear()
                batch = self._arrived[: self._max]
                del self._arrived[: self._max]
                self._room.set()
                yield batch
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
