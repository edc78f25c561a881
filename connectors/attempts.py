"""A courier's attempts: one record POSTed until it is delivered or dead-lettered.

`Attempts.deliver` sends the head record of a lane with the subscription's `WebhookSender`,
at most `CONCURRENCY` requests at a time over all lanes of the courier, and after every
failure asks the retry policy, `RetryPolicy.from_settings(settings.delivery)`, what next:
exponential backoff with full jitter, or exactly `Retry-After` when a 429/503 names one,
until the retry window has passed; then the record goes to `deliver.<id>.dlq` unchanged
plus error headers. A failure that is not retriable (`not_utf8`) is dead-lettered at once.
An unexpected exception while sending (a bug, ours or a library's) is a failed attempt
with code `internal_error`, retried and dead-lettered like any other.

The window runs from when the record came into its deliver topic, but not from before the
courier started (`connectors.holding.window_start`): records queued behind a retrying head,
read or still in Kafka behind the pending cap, age with it, so a subscriber that is down
longer than the window has its backlog dead-lettered after about one window, not one window
per event of a key or per 2,000 records. Every readable record gets at least one attempt; a
`Retry-After` that ends past the window dead-letters at once. A `410 Gone` is handed to
the courier (`gone`), which stops and has the dispatcher retire the subscription.

Every attempt is written to the delivery log; a record is finished only once the broker
has every write about it (`Held.writes`, `connectors.writes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

from connectors.endpoints import Endpoint, Endpoints, Turn
from connectors.holding import Held
from connectors.webhook import SubscriberGone, WebhookFailed, WebhookSender
from connectors.writes import Trouble, Write, Writer, dead_letter_write, log_write
from streams.config import Settings
from streams.delivery.log import Outcome, delivery_attempt
from streams.delivery.sinks import SinkPolicy
from streams.kafka.clients import Producer
from streams.kafka.topics import Topics
from streams.retry import RetryPolicy
from streams.routing.subscriptions import Subscription

__all__ = ["CONCURRENCY", "Attempts", "Gone", "pause"]

log = logging.getLogger(__name__)

CONCURRENCY: Final = 8  # concurrent requests per subscription (lanes of different keys)

Gone = Callable[[Held, int, SubscriberGone], None]  # (record, attempt, the 410)


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake up at once when `stopping` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)


class Attempts:
    """Delivers the records of one subscription, one `deliver` call per record."""

    def __init__(
        self,
        settings: Settings,
        subscription: Subscription,
        producer: Producer,
        counts: Counter[str],
        *,
        stopping: asyncio.Event,
        gone: Gone,
        trouble: Trouble,
        endpoints: Endpoints | None = None,
    ) -> None:
        self.subscription = subscription
        self.topics = Topics(settings.kafka.topic_prefix)
        self.counts = counts  # outcome -> how many (attempts for `retry`)
        self.writes: set[asyncio.Task[Write]] = set()  # every log write not confirmed yet
        self._delivery = settings.delivery
        self._policy = RetryPolicy.from_settings(settings.delivery)
        self._stopping = stopping
        self._gone = gone
        self._writer = Writer(producer, name=f"courier {subscription.id}", trouble=trouble)
        self._sinks = SinkPolicy.from_settings(settings)
        self._sender = WebhookSender(
            subscription, settings.delivery, connections=CONCURRENCY, policy=self._sinks
        )
        self._old_senders: list[WebhookSender] = []
        self._requests = asyncio.Semaphore(CONCURRENCY)
        self._endpoints = endpoints or Endpoints(settings.delivery)
        self._endpoint: Endpoint = self._endpoints.get(subscription.sink)

    def update(self, subscription: Subscription) -> None:
        """Use a changed subscription (sink, credential, secret) from the next attempt on."""
        # attempts in flight still use the old session: it is closed by `close`
        self._old_senders.append(self._sender)
        self.subscription = subscription
        self._sender = WebhookSender(
            subscription, self._delivery, connections=CONCURRENCY, policy=self._sinks
        )
        self._endpoint = self._endpoints.get(subscription.sink)

    async def close(self) -> None:
        """Close every HTTP session (call once no attempt is in flight)."""
        for sender in (*self._old_senders, self._sender):
            await sender.close()

    async def deliver(self, record: Held, stop: asyncio.Event | None = None) -> bool:
        """Deliver one record or dead-letter it; False when stopped before either (`stop`:
        this record's lane is to stop, default the courier's stopping)."""
        if record.problem is not None:
            problem = record.problem
            await self._dead_letter(record, 0, problem.code, f"{problem.path}: {problem.message}")
            return True
        assert record.value is not None  # a readable record has one
        token = object()  # this record, to its endpoint
        try:
            return await self._attempt(record, record.value, token, stop or self._stopping)
        finally:
            self._endpoint.released(token)

    async def _attempt(
        self, record: Held, value: bytes, token: object, stop: asyncio.Event
    ) -> bool:
        attempt, not_before = 0, 0.0
        until = record.since + self._delivery.retry_window_s
        failure: WebhookFailed | None = None
        endpoint = self._endpoint
        while True:
            turn = await endpoint.turn(token, not_before=not_before, until=until, stopping=stop)
            if turn is Turn.STOPPED:
                return False
            if turn is Turn.EXPIRED and failure is not None:  # tried before: no more tries
                await self._dead_letter(record, attempt, failure.code, str(failure), failure.status)
                return True
            async with self._requests:
                if stop.is_set():
                    return False
                if turn is Turn.GO and endpoint.failing:
                    continue  # found failing while this waited for a request slot: ask again
                attempt += 1
                try:
                    status = await self._sender.send(
                        value, source=record.ref.source, event_id=record.ref.id
                    )
                except SubscriberGone as exc:
                    self._gone(record, attempt, exc)
                    return False
                except WebhookFailed as exc:
                    failure = exc
                except Exception as exc:  # a bug is a failed attempt: retried, then a DLQ entry
                    log.exception(
                        "subscription %s, event %s: attempt %d failed with an internal error",
                        self.subscription.id,
                        record.ref.id,
                        attempt,
                    )
                    failure = WebhookFailed(
                        f"internal error: {type(exc).__name__}", code="internal_error"
                    )
                else:
                    endpoint.succeeded(token)
                    self.log(record, "delivered", attempt, status=status)
                    return True
            if failure.retriable:
                endpoint.failed(token, failure.retry_after)
            else:
                endpoint.released(token)
            elapsed = time.monotonic() - record.since
            wait = self._policy.wait(failure, attempt=attempt, elapsed_s=elapsed)
            if wait is None:
                await self._dead_letter(record, attempt, failure.code, str(failure), failure.status)
                return True
            self.log(record, "retry", attempt, status=failure.status, error=failure.code)
            log.info(
                "subscription %s, event %s: attempt %d failed (%s); next in %s",
                self.subscription.id,
                record.ref.id,
                attempt,
                failure.code,
                "the endpoint's next probe" if endpoint.failing else f"{wait:.2f}s",
            )
            # the last attempt falls at the window's end; a failing endpoint paces it instead
            not_before = time.monotonic() + wait

    async def _dead_letter(
        self, record: Held, attempt: int, error: str, detail: str, status: int | None = None
    ) -> None:
        """Write the record to the DLQ and wait until the broker has it: the lane moves on only
        then, so the DLQ keeps the order of a key even when a write has to be retried."""
        deliver = self.topics.deliver(self.subscription.id)
        await self._writer.write(
            dead_letter_write(
                self.topics.dlq(self.subscription.id),
                record.key,
                record.headers,
                record.value,
                origin=f"{deliver}/{record.partition}/{record.offset}",
                error=error,
                detail=detail,
                attempts=attempt,
            )
        )
        self.log(record, "dead_lettered", attempt, status=status, error=error)
        log.warning(
            "subscription %s, event %s: dead-lettered after %d attempts (%s)",
            self.subscription.id,
            record.ref.id,
            attempt,
            error,
        )

    def log(
        self,
        record: Held,
        outcome: Outcome,
        attempt: int,
        *,
        status: int | None = None,
        error: str | None = None,
    ) -> None:
        """Count `outcome` and write it to the delivery log (the record waits for the write)."""
        self.counts[outcome] += 1
        attempt_record = delivery_attempt(
            subscription=self.subscription.id,
            purpose=self.subscription.purpose,
            ref=record.ref,
            outcome=outcome,
            attempt=attempt,
            status=status,
            error=error,
        )
        task = asyncio.create_task(
            self._writer.write(log_write(self.topics.deliveries, attempt_record))
        )
        record.writes.append(task)
        self.writes.add(task)
        task.add_done_callback(self.writes.discard)
