"""The publisher SDK: publish events into the bus over Kafka or HTTP.

    async with KafkaPublisher("localhost:9092") as bus:
        await bus.publish(event)                      # validated, then acks=all

    async with KafkaPublisher(KafkaSettings(bootstrap_servers="kafka-1:9093",
                                            security_protocol="SASL_SSL",
                                            sasl_username="brp-publisher", ...),
                              client_id="brp") as bus:
        ...                                           # a Kafka publisher on a secured cluster

    async with HttpPublisher("http://localhost:8080", token=TOKEN) as bus:
        ids = await bus.publish([event1, event2])     # 202 after the bus has them in Kafka

Both validate before sending (the same rules as the bus), so a publisher learns about a bad
event at once instead of from the invalid topic.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import aiohttp

from streams.config import KafkaSettings
from streams.contract import attributes, codec
from streams.contract.envelope import CloudEvent
from streams.contract.rules import validate
from streams.exceptions import FieldError, InvalidEvent, KafkaUnavailable
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics

__all__ = ["HttpPublisher", "KafkaPublisher", "PublishRejected"]


class PublishRejected(InvalidEvent):
    """The bus answered 4xx; `status` is the HTTP status, `errors` what it said."""

    def __init__(self, status: int, errors: Sequence[FieldError]) -> None:
        super().__init__(errors)
        self.status = status


def _check(events: Sequence[CloudEvent]) -> None:
    errors = [
        FieldError(f"[{i}].{e.path}" if len(events) > 1 else e.path, e.code, e.message)
        for i, event in enumerate(events)
        for e in validate(event)
    ]
    if errors:
        raise InvalidEvent(errors)


class KafkaPublisher:
    """Publishes binary-mode CloudEvents into an ingress topic (idempotent, acks=all).

    With `client_id`, into that Kafka publisher's own `gemeentebus.ingress.<client id>`:
    the bus judges every record there against that client's publish grant (and on a secured
    cluster only its principal, the `kafka.sasl_username` given here, may write it). Without,
    into the shared `gemeentebus.ingress`, which only trusted writers may use.

    Records are keyed by a keyed hash only this publisher knows (BSN for person events, the
    zaak for zaak events), so one person's events keep their order and no BSN is in a key.
    `kafka` is the cluster with its transport (TLS, SASL), or bootstrap servers alone for a
    plaintext one; the topic prefix is its `topic_prefix` unless given.
    """

    def __init__(
        self,
        kafka: KafkaSettings | str,
        *,
        client_id: str | None = None,
        topic_prefix: str | None = None,
        ordering_secret: bytes | None = None,
        **producer_options: Any,
    ) -> None:
        if isinstance(kafka, str):
            kafka = KafkaSettings(bootstrap_servers=kafka)
        topics = Topics(topic_prefix or kafka.topic_prefix)
        self._topic = topics.ingress if client_id is None else topics.publisher_ingress(client_id)
        self._secret = ordering_secret or os.urandom(32)
        self._producer = make_producer(kafka, "publisher", **producer_options)

    @property
    def topic(self) -> str:
        """The ingress topic this publisher writes into."""
        return self._topic

    async def __aenter__(self) -> Self:
        await self._producer.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._producer.stop()

    async def publish(self, *events: CloudEvent) -> None:
        """Validate all, then send all and wait until the broker has every one of them."""
        _check(events)
        futures = []
        for event in events:
            key = attributes.partition_key(event.type, event.data, self._secret)
            record = codec.to_kafka(event, key=key)
            futures.append(
                await self._producer.send(
                    self._topic, record.value, key=record.key, headers=list(record.headers)
                )
            )
        try:
            await asyncio.gather(*futures)
        except Exception as exc:
            raise KafkaUnavailable(f"the broker did not confirm: {type(exc).__name__}") from exc


class HttpPublisher:
    """Publishes structured-mode CloudEvents to `POST /events` of a gemeentebus API."""

    def __init__(self, base_url: str, *, token: str, timeout_s: float = 30.0) -> None:
        self._url = base_url.rstrip("/") + "/events"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def publish(self, events: Sequence[CloudEvent]) -> list[str]:
        """Send one batch (all or nothing); the ids the bus accepted."""
        if self._session is None:
            raise RuntimeError("use `async with HttpPublisher(...)`")
        _check(events)
        body = [codec.to_json(event) for event in events]
        async with self._session.post(
            self._url,
            json=body,
            headers={"Content-Type": codec.BATCH_CONTENT_TYPE},
        ) as response:
            answer = await response.json(content_type=None)
            if response.status == 202:
                return list(answer["ids"])
            errors = [
                FieldError(
                    f"[{e.get('index', 0)}].{e.get('path', '')}",
                    e.get("code", "rejected"),
                    e.get("message", ""),
                )
                for e in answer.get("errors", [])
            ] or [FieldError("body", f"http_{response.status}", str(answer.get("detail", "")))]
            raise PublishRejected(response.status, errors)
