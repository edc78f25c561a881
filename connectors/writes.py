"""The courier's Kafka writes: a dead letter or a delivery-log record, kept until confirmed.

A deliver-topic record is finished (its offset may be committed) only once the broker has
every write about it, so no write is dropped:
- a temporary error (the broker away, a leader moving, a producer spoiled by an expired
  batch, which `streams.kafka.clients.Producer` replaces on the next send) is retried with
  `streams.retry.WRITES` backoff; the first failure of a topic is logged, and a topic still
  failing after `BROKEN_AFTER_S` makes the courier's health part broken until a write to it
  lands;
- a permanent error (the record too large for the topic, the topic refused) is not retried
  as is: the write falls back, once, to its smaller copy (`Write.fallback`: a dead letter
  without its value, a delivery-log record with its long fields cut). A fallback refused
  permanently too means the topic itself is wrong (too small a `max.message.bytes`, an
  ACL): an operator's fix, so it is retried at the slowest pace, broken at once, and lands
  as soon as the topic is fixed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiokafka.errors import KafkaError

from streams.contract.headers import RawHeaders
from streams.delivery.dlq import dead_letter_headers, truncated_headers
from streams.delivery.log import DeliveryAttempt, encode_attempt, shortened
from streams.kafka.clients import Producer
from streams.retry import WRITES

__all__ = [
    "BROKEN_AFTER_S",
    "WRITE_LINGER_MS",
    "Trouble",
    "Write",
    "Writer",
    "dead_letter_write",
    "log_write",
]

log = logging.getLogger(__name__)

BROKEN_AFTER_S: Final = 10.0  # a topic failing this long makes the courier not ready
# how long the producer of these writes gathers records into one request: a burst's
# delivery-log records go a few hundred per request, not one or two
WRITE_LINGER_MS: Final = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class Write:
    """One record to write; `fallback` is written instead after a permanent error."""

    what: str  # for the log: "dead letter", "delivery log"
    topic: str
    key: bytes | None
    value: bytes | None
    headers: RawHeaders = ()
    fallback: Write | None = None


def dead_letter_write(
    topic: str,
    key: bytes | None,
    headers: RawHeaders,
    value: bytes | None,
    *,
    origin: str,
    error: str,
    detail: str,
    attempts: int,
) -> Write:
    """A dead letter: the record unchanged plus error headers; its fallback leaves the value
    out and says where the original is (`origin`: `<topic>/<partition>/<offset>`)."""
    letter = dead_letter_headers(headers, error=error, detail=detail, attempts=attempts)
    small = truncated_headers(letter, value_bytes=len(value or b""), origin=origin)
    without = Write(what="dead letter without its value", topic=topic, key=key, value=None,
                    headers=small)  # fmt: skip
    return Write(
        what="dead letter", topic=topic, key=key, value=value, headers=letter, fallback=without
    )


def log_write(topic: str, attempt: DeliveryAttempt) -> Write:
    """A delivery-log record; its fallback has the long free-text fields cut (none when
    there is nothing to cut: the copy would be the same record)."""
    key, value = encode_attempt(attempt)
    short = shortened(attempt)
    if short is attempt:
        return Write(what="delivery-log record", topic=topic, key=key, value=value)
    cut = Write(what="delivery-log record, cut", topic=topic, key=key,
                value=encode_attempt(short)[1])  # fmt: skip
    return Write(what="delivery-log record", topic=topic, key=key, value=value, fallback=cut)


Trouble = Callable[[str, str | None], None]  # (topic, reason or None when mended)


class Writer:
    """Writes records through one producer until the broker confirms each."""

    def __init__(self, producer: Producer, *, name: str, trouble: Trouble | None = None) -> None:
        self._producer = producer
        self._name = name
        self._trouble = trouble
        self._failing: dict[str, float] = {}  # topic -> monotonic time of its first failure
        self._broken: set[str] = set()

    @property
    def failing(self) -> frozenset[str]:
        """The topics whose writes fail now."""
        return frozenset(self._failing)

    async def write(self, write: Write) -> Write:
        """Return once the broker has `write` or its fallback (the one written)."""
        attempt = 0
        current = write
        while True:
            try:
                future = await self._producer.send(
                    current.topic, current.value, key=current.key, headers=list(current.headers)
                )
                await future
            except KafkaError as exc:
                attempt += 1
                permanent = not WRITES.retriable(exc)
                if permanent and current.fallback is not None:
                    log.warning(
                        "%s: a %s was refused by %s (%s): writing its smaller copy instead",
                        self._name,
                        current.what,
                        current.topic,
                        type(exc).__name__,
                    )
                    current, attempt = current.fallback, 0
                    continue
                self._failed(current, exc, permanent=permanent)
                await asyncio.sleep(WRITES.max_s if permanent else WRITES.delay(attempt))
            else:
                self._landed(current.topic)
                return current

    def _failed(self, write: Write, exc: KafkaError, *, permanent: bool) -> None:
        now = time.monotonic()
        if write.topic not in self._failing:
            self._failing[write.topic] = now
            log.warning(
                "%s: writing a %s to %s failed (%s); retrying until it lands",
                self._name,
                write.what,
                write.topic,
                type(exc).__name__,
            )
        if write.topic in self._broken:
            return
        if permanent or now - self._failing[write.topic] >= BROKEN_AFTER_S:
            self._broken.add(write.topic)
            reason = (
                f"{write.topic} refuses writes ({type(exc).__name__}); fix the topic"
                if permanent
                else f"writes to {write.topic} failing for {now - self._failing[write.topic]:.0f}s"
                f" ({type(exc).__name__})"
            )
            log.error("%s: %s", self._name, reason)
            if self._trouble is not None:
                self._trouble(write.topic, reason)

    def _landed(self, topic: str) -> None:
        if self._failing.pop(topic, None) is None:
            return
        log.info("%s: writes to %s land again", self._name, topic)
        if topic in self._broken:
            self._broken.discard(topic)
            if self._trouble is not None:
                self._trouble(topic, None)
