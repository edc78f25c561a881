"""Every Kafka client of the bus: the Faust application, producers, consumers, admin clients.

This module is the only place a Kafka client is made (a test checks it), so every client
gets the configured transport: `security_options` turns `kafka.security_protocol`,
`kafka.sasl_*` and `kafka.ssl_*` into aiokafka's options (an `ssl.SSLContext` from
`aiokafka.helpers.create_ssl_context`, the SASL mechanism and credentials), and
`faust_credentials` into Faust's `broker_credentials`, which Faust hands to the same
aiokafka options. `check_access` turns a rejected password or certificate into one line
naming the setting (aiokafka itself only says it could not bootstrap).

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
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, errors
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.admin import SaslHandShakeRequest
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from streams.config import KafkaSettings, Settings
from streams.exceptions import ConfigurationError
from streams.kafka.partitioner import KeyPartitioner
from streams.retry import refused_for_size, spoils_producer

__all__ = [
    "MAX_REQUEST_BYTES",
    "EventBatches",
    "Producer",
    "Writable",
    "check_access",
    "faust_credentials",
    "fits",
    "make_admin",
    "make_app",
    "make_consumer",
    "make_producer",
    "security_options",
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


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    """The TLS context of `settings`: the CA (default: the system's), a client certificate
    for mTLS, the host name check."""
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ConfigurationError(f"kafka.{name} {path} is not a readable file")
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=settings.ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"kafka.ssl_cafile cannot be loaded: {exc}") from exc
    if settings.ssl_certfile is not None:
        try:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"kafka.ssl_certfile / kafka.ssl_keyfile cannot be loaded: {exc}"
            ) from exc
    # aiokafka's helper always checks the host name; off, the chain is still verified.
    context.check_hostname = settings.ssl_check_hostname
    return context


def security_options(settings: KafkaSettings) -> dict[str, Any]:
    """aiokafka's options for the configured transport: `security_protocol`, and
    `ssl_context` and `sasl_*` where the protocol uses them. Every client is made with these."""
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.uses_tls:
        options["ssl_context"] = ssl_context(settings)
    if settings.uses_sasl:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password_value()
    return options


def faust_credentials(settings: KafkaSettings) -> CredentialsT | None:
    """Faust's `broker_credentials` for the configured transport (None for PLAINTEXT).

    Faust turns them into the same aiokafka options as `security_options` for its consumer
    and producer (`faust.transport.drivers.aiokafka.credentials_to_aiokafka_auth`).
    """
    if settings.uses_sasl:
        return SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password_value(),
            ssl_context=ssl_context(settings) if settings.uses_tls else None,
            mechanism=settings.sasl_mechanism,
        )
    if settings.uses_tls:
        return SSLCredentials(ssl_context(settings))
    return None


# OpenSSL's verify code for a certificate whose names do not include the host.
_HOSTNAME_MISMATCH = 62


async def check_access(settings: Settings | KafkaSettings, *, timeout_s: float = 10.0) -> None:
    """Raise `ConfigurationError` when a bootstrap broker refuses this client's transport or
    credentials, naming the setting to fix; return when a broker lets it in, or when none
    answers at all (a cluster that is away is the caller's to wait for).

    aiokafka only logs such a refusal and then reports that it could not bootstrap, which
    looks the same as a cluster that is down; `run` and the topic commands ask this instead.
    """
    kafka = _kafka(settings)
    options = security_options(kafka)
    refusal: ConfigurationError | None = None
    for host, port, _family in collect_hosts(kafka.bootstrap_servers, randomize=False):
        where = f"{host}:{port}"
        try:
            conn = await create_conn(
                host,
                port,
                client_id=f"{kafka.client_id}-check",
                request_timeout_ms=int(timeout_s * 1000),
                **options,
            )
            try:  # what every client asks first; a SASL listener answers no one unauthenticated
                await conn.send(MetadataRequest([]))
            finally:
                conn.close()
        except errors.SaslAuthenticationFailed as exc:
            refusal = ConfigurationError(
                f"kafka.sasl_password refused by {where}: {kafka.sasl_mechanism} "
                f"authentication failed for kafka.sasl_username {kafka.sasl_username!r} "
                "(wrong password, or no such user)"
            )
            refusal.__cause__ = exc
        except errors.UnsupportedSaslMechanismError as exc:
            refusal = ConfigurationError(
                f"kafka.sasl_mechanism {kafka.sasl_mechanism} is not enabled on {where}: {exc}"
            )
            refusal.__cause__ = exc
        except ssl.SSLCertVerificationError as exc:
            setting = (
                "kafka.ssl_check_hostname"
                if exc.verify_code == _HOSTNAME_MISMATCH
                else "kafka.ssl_cafile"
            )
            refusal = ConfigurationError(
                f"{setting}: the certificate of {where} does not verify ({exc.verify_message})"
            )
            refusal.__cause__ = exc
        except ssl.SSLError as exc:
            refusal = ConfigurationError(
                f"kafka.security_protocol {kafka.security_protocol}: the TLS handshake with "
                f"{where} failed ({exc.reason}); does it expect PLAINTEXT or SASL_PLAINTEXT?"
            )
            refusal.__cause__ = exc
        except (OSError, TimeoutError, errors.KafkaError) as exc:
            if not kafka.uses_tls and await _speaks_tls(host, port, timeout_s):
                refusal = ConfigurationError(
                    f"kafka.security_protocol is {kafka.security_protocol}, but {where} "
                    "expects TLS: set SSL or SASL_SSL (and kafka.ssl_cafile)"
                )
                refusal.__cause__ = exc
            elif not kafka.uses_sasl and await _wants_sasl(host, port, options, timeout_s):
                refusal = ConfigurationError(
                    f"kafka.security_protocol is {kafka.security_protocol}, but {where} "
                    "expects SASL: set SASL_SSL, kafka.sasl_username and kafka.sasl_password"
                )
                refusal.__cause__ = exc
            continue  # not reached, or not answering: another broker may
        else:
            return
    if refusal is not None:
        raise refusal


async def _speaks_tls(host: str, port: int, timeout_s: float) -> bool:
    """Whether `host:port` completes a TLS handshake (its certificate not judged: only the
    question whether a plaintext client knocked on a TLS listener)."""
    probe = ssl.create_default_context()
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(host, port, ssl=probe)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return True


async def _wants_sasl(host: str, port: int, options: dict[str, Any], timeout_s: float) -> bool:
    """Whether `host:port` offers SASL mechanisms (a listener without SASL offers none)."""
    try:
        conn = await create_conn(host, port, request_timeout_ms=int(timeout_s * 1000), **options)
    except (OSError, TimeoutError, errors.KafkaError):
        return False
    try:
        answer = await conn.send(SaslHandShakeRequest("SCRAM-SHA-512"))
    except (OSError, TimeoutError, errors.KafkaError):
        return False
    finally:
        conn.close()
    return bool(answer.enabled_mechanisms)


def _kafka_url(bootstrap: str) -> list[str]:
    return [f"kafka://{server.strip()}" for server in bootstrap.split(",") if server.strip()]


def make_app(settings: Settings, name: str, **overrides: Any) -> faust.App:
    """A Faust app whose consumer group is `<topic prefix>.<name>`.

    Safe defaults: no web server (Faust's `/table/` views are unauthenticated), no
    auto-created internal topics beyond Faust's own, start at the earliest offset for a new
    group, commit often. Faust's data directory (empty: tables live in memory) goes under the
    system's temporary directory, not into whatever directory the process was started in.
    """
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
    }
    options.update(overrides)
    return faust.App(app_id, **options)


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


class Producer:
    """An idempotent aiokafka producer that replaces its client once the client is spoiled.

    A batch that expired while the broker was away used up its sequence numbers, and from
    then on the client fails every send (`OutOfOrderSequenceNumber`, for good). The first
    send after any spoiling error (`streams.retry.spoils_producer`) therefore stops the old
    client and starts a new one (a new producer id, sequences from zero). The records that
    failed are the caller's to send again: their futures raised, so they were never acked.
    `replaced` counts the replacements (a gauge of trouble, not of progress).
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._client = AIOKafkaProducer(**options)
        self._started = False
        self._spoiled: BaseException | None = None
        self._replacing: asyncio.Lock | None = None
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
        await self._client.stop()

    async def flush(self) -> None:
        """Wait until every record queued so far was sent (confirmed or failed)."""
        await self._client.flush()

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
        if self._replacing is None:
            self._replacing = asyncio.Lock()
        async with self._replacing:
            if self._spoiled is None:
                return  # another sender replaced it meanwhile
            old, self._client = self._client, AIOKafkaProducer(**self._options)
            self._spoiled = None
            with contextlib.suppress(Exception):  # the old client is broken: close what closes
                await asyncio.wait_for(old.stop(), timeout=5.0)
            await self._client.start()
            self.replaced += 1


def make_consumer(
    settings: Settings | KafkaSettings,
    name: str,
    *topics: str,
    group: str | None = None,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """A consumer that commits only by hand, starts a new group (or a group-less reader) at
    the earliest offset and long-polls at most 100 ms; subscribed to `topics` when given,
    else to be assigned or subscribed; call `start()` on it."""
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


def make_admin(
    settings: Settings | KafkaSettings, name: str = "admin", **overrides: Any
) -> AIOKafkaAdminClient:
    """An admin client (topics, configs, partitions); call `start()` and `close()` on it."""
    kafka = _kafka(settings)
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": f"{kafka.client_id}-{name}",
        "request_timeout_ms": int(kafka.request_timeout_s * 1000),
        **security_options(kafka),
    }
    options.update(overrides)
    return AIOKafkaAdminClient(**options)


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


class EventBatches:
    """A Faust stream read in batches of whatever has arrived, acked by hand.

    Unlike `Stream.noack_take`, no batch waits for a window to close: the first event that
    arrives after a batch was taken starts the next one at once, and while a batch is being
    handled (validated, produced, confirmed) the events arriving meanwhile gather for the
    next. Quiet input gives batches of one at the latency of one; a backlog gives batches of
    `max_size`. Nothing is acked here: `ack` the events of a batch once their outputs are
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
                self._more.clear()
                batch = self._arrived[: self._max]
                del self._arrived[: self._max]
                self._room.set()
                yield batch
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
