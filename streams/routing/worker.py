"""The stream worker: `gemeentebus.ingress` and every Kafka publisher's
`gemeentebus.ingress.<client id>` → `gemeentebus.events.<type>` and the
`gemeentebus.deliver.<id>` topics of every matching subscription | `.invalid`.

One pass per record: read it (`read_record`), judge it (the gate), and for an accepted
event, route it (`streams.routing.router`): its events-topic record goes out first, its delivery
records right behind it, all confirmed together. One hop from ingress to every subscriber,
one write of the event itself.

Who published a record is told by the topic it was read from. Each Kafka publisher
(`ClientConfig.kafka_publisher`) writes into its own ingress topic, which the broker lets
only its principal write (`gemeentebus acls apply`); a record there is judged against that
client's publish grant first (`streams.auth.authorize_publish`, the check of the HTTP API)
and one outside it is a dead letter (`type_not_granted`, `source_not_granted`) that reaches
no events topic and no subscriber. The shared `gemeentebus.ingress` is the channel of
trusted writers (the operators' `gemeentebus publish`, a bus without Kafka publishers): no
grant is checked there, and on a secured cluster no publisher may write it.

At-least-once, by construction:
- records are read in batches without auto-ack (`EventBatches`: whatever has arrived, no
  batching window; a backlog in batches of `BATCH_SIZE`), judged and routed, produced with
  the idempotent producer, and acked only after the broker confirmed every record of the
  batch (a batch is never half-acked);
- each batch is routed against every subscription written before it was read
  (`SubscriptionStore.sync`), so a subscription that got its 201 gets what follows;
- one record never stops the others: a record that is no record of ours (a null header
  value, a value over `http.max_event_bytes`, ...) and bad input are dead letters with a
  reason; an unexpected error while judging or routing one record dead-letters that ingress
  record with code `internal_error` (and its event is not written: it reached nobody); a
  record the broker refuses for its size dead-letters its ingress record as `too_large`
  (and a dead letter too large for the invalid topic goes out truncated);
- a failed produce is retried, the batch unacked, with `streams.retry.PRODUCE` while the
  error is temporary (without end): logged every time, `worker/stream` broken in `Health`
  after `BROKEN_AFTER_S`. A permanent error (authorization, an invalid topic) or a bug in the
  loop stops the worker for good (`WorkerFailed`, health broken with the reason): nothing
  after the last acked batch is acked, so no record is skipped;
- concurrency is 1: order per key is the order of the ingress partition (of each ingress
  topic: a publisher keys its records, so one person's events from one publisher keep
  their order). Scale out with partitions and worker processes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

import faust
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from streams.auth import Client, kafka_publishers
from streams.config import Settings
from streams.contract.record import KafkaRecord, Unreadable, read_record
from streams.contract.rules import dutch_today
from streams.exceptions import FieldError, KafkaUnavailable, RoutingFailed, WorkerFailed
from streams.health import Health, Progress
from streams.ingress import metrics
from streams.ingress.gate import Accepted, Gate, Rejected
from streams.kafka.clients import (
    EventBatches,
    Producer,
    fits,
    make_app,
    make_producer,
    send_all,
    send_each,
)
from streams.kafka.topics import Topics
from streams.retry import PRODUCE, missing_for_good, refused_for_size
from streams.routing.router import Output, Router
from streams.routing.store import SubscriptionStore

__all__ = [
    "BATCH_SIZE",
    "BROKEN_AFTER_S",
    "INTERNAL_ERROR",
    "TOO_LARGE",
    "Plan",
    "Validator",
    "outcome_for",
    "outputs_for",
    "plan_batch",
    "produce",
]

log = logging.getLogger(__name__)

BATCH_SIZE: Final = 500
INTERNAL_ERROR: Final = "internal_error"
TOO_LARGE: Final = "too_large"
# A produce failing this long (temporary errors, retried) makes the worker not ready.
BROKEN_AFTER_S: Final = 30.0
# How much of a dead letter's value is kept when the invalid topic refused the whole.
TRUNCATED_BYTES: Final = 1024
# Size refusals of one ingress record: 1 dead-letters it, 2 truncates the dead letter,
# 3 means the invalid topic refuses even that, which no record can fix.
_MAX_REFUSALS: Final = 2


def outcome_for(
    gate: Gate, record: KafkaRecord | Unreadable, publisher: Client | None = None
) -> Accepted | Rejected:
    """Judge one ingress record (from `publisher`'s own ingress topic, or the shared one:
    None); any unexpected failure becomes a dead letter, not a crash."""
    if isinstance(record, Unreadable):
        return gate.reject(record, [record.error])
    try:
        return gate.from_record(record, publisher=publisher)
    except Exception as exc:  # noqa: BLE001 - the agent must never lose a record to a bug
        # The type only: an exception's text may quote the input, and the input may be a BSN.
        log.error(
            "internal error (%s) while validating a record; sent to the invalid topic",
            type(exc).__name__,
        )
        error = FieldError(
            "event", INTERNAL_ERROR, f"the bus failed on this record: {type(exc).__name__}"
        )
        return gate.reject(record, [error])


def outputs_for(router: Router, outcomes: Iterable[Accepted | Rejected]) -> list[Output]:
    """Every record the outcomes produce, in send order: each accepted event's own record,
    then its delivery records; each rejected input's dead letter. Raises `RoutingFailed`
    (nothing returned, so nothing sent) when routing any event fails."""
    today = dutch_today()
    outputs: list[Output] = []
    for outcome in outcomes:
        outputs.append((outcome.topic, outcome.record))
        if isinstance(outcome, Accepted):
            outputs += router.fan_out(outcome.event, outcome.record, today=today)
    return outputs


@dataclass(frozen=True, slots=True)
class Plan:
    """What one batch of ingress records becomes: per record its outcome, and every output
    in send order with the index of the ingress record it came from."""

    outcomes: list[Accepted | Rejected]
    outputs: list[Output]
    sources: list[int]


def plan_batch(
    gate: Gate,
    router: Router,
    records: Sequence[KafkaRecord | Unreadable],
    refused: Mapping[int, int],
    *,
    today: date,
    publishers: Sequence[Client | None] = (),
) -> Plan:
    """Judge and route each record on its own: one record's failure is its own dead letter.

    `publishers[i]` is the Kafka publisher whose ingress topic record `i` came from (None,
    or no entry: the shared ingress topic); its grant judges the record first.

    `refused[i]` counts how often the broker refused an output of record `i` for its size:
    an accepted event is then dead-lettered as `too_large`; a dead letter that was refused
    goes out truncated. A record the producer cannot take is `too_large` before anything of
    it is sent; a broker refusal (a topic's `max.message.bytes`) is found after the send, and
    the batch is sent again whole (duplicates of its other records, in order).
    """
    outcomes: list[Accepted | Rejected] = []
    outputs: list[Output] = []
    sources: list[int] = []
    for index, record in enumerate(records):
        publisher = publishers[index] if index < len(publishers) else None
        outcome = outcome_for(gate, record, publisher)
        routed: list[Output] = []
        if refused.get(index, 0) > 0:
            times = refused[index]
            if isinstance(outcome, Accepted):  # its event's records were refused
                detail = "a record this input makes is over the broker's size limit"
                outcome = gate.reject(record, [FieldError("event", TOO_LARGE, detail)])
                times -= 1
            if times > 0:  # its dead letter was refused: keep the reason, cut the value
                outcome = Gate.truncated(outcome, TRUNCATED_BYTES)
        elif isinstance(outcome, Accepted):
            try:
                routed = router.fan_out(outcome.event, outcome.record, today=today)
            except RoutingFailed as exc:
                log.error("%s; the ingress record goes to the invalid topic", exc)
                error = FieldError("event", INTERNAL_ERROR, str(exc))
                outcome = gate.reject(record, [error])
            else:
                if not all(fits(r) for _, r in ((outcome.topic, outcome.record), *routed)):
                    # refused before anything is sent: no part of the event is written
                    detail = "a record this event makes is over the producer's size limit"
                    outcome = gate.reject(record, [FieldError("event", TOO_LARGE, detail)])
                    routed = []
        outcomes.append(outcome)
        for output in ((outcome.topic, outcome.record), *routed):
            outputs.append(output)
            sources.append(index)
    return Plan(outcomes, outputs, sources)


def _for_size(exc: BaseException | None) -> bool:
    return exc is not None and refused_for_size(exc)


def _reason(exc: BaseException) -> str:
    # The type and, for aiokafka's errors, its fixed description: never a record's content.
    return type(exc).__name__


class Validator:
    """The Faust app and agent that validate and route ingress records.

    `store` is the subscription set to route against; by default the validator starts its
    own. `health` receives the progress of the `worker` role's `stream` part. When the worker
    fails for good, `failure` holds why and `wait()` raises it; it then stops consuming.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: SubscriptionStore | None = None,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.kafka.topic_prefix)
        self.gate = Gate(self.topics, settings.security.pseudonym_key_bytes())
        self.store = (
            store if store is not None else SubscriptionStore(settings, name="validator-store")
        )
        self._own_store = store is None
        self.router = Router(settings, store=self.store)
        # Stopping does not wait for unacked records to be acked: they come back to whoever
        # reads the partition next, and a failed worker's are never acked (no stop hangs).
        self.app = make_app(settings, "validator", stream_wait_empty=False)
        self.producer: Producer = make_producer(settings, "validator")
        # The topic a record comes from says who published it: each Kafka publisher's own.
        self.publishers: dict[str, Client] = {
            self.topics.publisher_ingress(id_): client
            for id_, client in kafka_publishers(settings).items()
        }
        self.source = self.app.topic(
            self.topics.ingress, *self.publishers, key_serializer="raw", value_serializer="raw"
        )
        self.app.agent(self.source, name="validate", concurrency=1)(self._agent)
        self.health = health or Health()
        self.progress: Progress = self.health.part("worker", "stream")
        self.max_record_bytes = settings.http.max_event_bytes  # one limit for both channels
        self.processed = 0  # ingress records handled
        self.batches = 0  # batches they came in
        self.delivered = 0  # records written to delivery topics
        self.failure: WorkerFailed | None = None
        self._failed = asyncio.Event()
        self._ready = asyncio.Event()  # the subscription set read and the producer started
        self._stopping: asyncio.Task[None] | None = None
        self._watch: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Read the subscription set, start the producer and join the consumer group, all
        at once; the agent routes nothing before the first two are done."""

        async def store() -> None:
            if self._own_store:
                await self.store.start()
            await self.store.ready()  # never route against an empty or partial set

        async def producer() -> None:
            await self.producer.start()

        await asyncio.gather(store(), producer(), self.app.start())
        self._ready.set()
        self._watch = asyncio.ensure_future(self._watch_consumer())
        self.health.started("worker")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._stopping is not None:
            await self._stopping
        else:
            await self.app.stop()
        await self.producer.stop()
        if self._own_store:
            await self.store.stop()

    async def wait(self) -> None:
        """Return never while the worker works; raise `WorkerFailed` once it failed."""
        await self._failed.wait()
        assert self.failure is not None
        raise self.failure

    def read(self, message: Any) -> KafkaRecord | Unreadable:
        """One consumed ingress message as a record of ours, or why it is none."""
        return read_record(
            message.key, message.headers, message.value, max_bytes=self.max_record_bytes
        )

    async def _agent(self, stream: faust.StreamT[Any]) -> None:
        batches = EventBatches(stream, BATCH_SIZE)
        try:
            await self._ready.wait()
            async for batch in batches:
                started = time.perf_counter()
                records = [self.read(event.message) for event in batch]
                publishers = [self.publishers.get(event.message.topic) for event in batch]
                plan = await self._write(records, publishers)
                await batches.ack(batch)
                self.processed += len(batch)
                self.batches += 1
                self.delivered += len(plan.outputs) - len(plan.outcomes)
                self.progress.advanced()
                self.progress.waiting(self._lag(batch))
                metrics.observe_batch(plan.outcomes, "kafka", time.perf_counter() - started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - nothing acked past it: stop, visibly
            # Returning or raising would let Faust restart the agent *past* the unacked
            # batch (it does not seek back), and its commit skips a one-record gap.
            self._fail(exc)
            await asyncio.Event().wait()  # hold the partitions unacked until stopped

    async def _watch_consumer(self) -> None:
        """Faust's fetcher dies, silently, on a record batch aiokafka cannot parse (before
        `streams.kafka.lenient`, any header name that was not UTF-8; still, a batch whose
        structure is corrupt): the worker then reads nothing. Say so and stop."""
        fetcher: Any = self.app._fetcher
        while self.failure is None:
            await asyncio.sleep(1.0)
            if fetcher.crashed:
                reason = _reason(fetcher.crash_reason or RuntimeError())
                self._fail(
                    WorkerFailed(
                        f"the Kafka consumer crashed ({reason}): a record batch the client "
                        "cannot parse"
                    )
                )

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, WorkerFailed):
            failure = exc
        else:
            log.exception("the worker failed on a bug (%s)", _reason(exc))
            failure = WorkerFailed(f"the worker failed on a bug: {_reason(exc)}")
        log.error("%s; stopping the worker (nothing after the last acked batch is acked)", failure)
        self.failure = failure
        self.progress.broken(str(failure))
        self.health.fail(f"worker: {failure}")  # `gemeentebus run` exits 1 for a supervisor
        self._failed.set()
        self._stopping = asyncio.ensure_future(self.app.stop())  # leave the group: exit the role

    def _lag(self, batch: Sequence[faust.EventT[Any]]) -> int:
        last: dict[Any, int] = {}
        for event in batch:
            last[event.message.tp] = max(last.get(event.message.tp, -1), event.message.offset)
        lag = 0
        for tp, offset in last.items():
            try:
                highwater = self.app.consumer.highwater(tp)
            except (KafkaError, AssertionError):  # aiokafka's "Partition is not assigned"
                continue  # no longer assigned (a rebalance): not ours to wait for
            if highwater is not None:  # None: assigned again, not fetched yet (a rebalance)
                lag += max(0, highwater - offset - 1)
        return lag

    async def _write(
        self, records: Sequence[KafkaRecord | Unreadable], publishers: Sequence[Client | None]
    ) -> Plan:
        """Judge, route and produce one batch until the broker confirmed all of it; retried
        while the errors are temporary, `WorkerFailed` when one is permanent."""
        refused: dict[int, int] = {}
        first_failure: float | None = None
        unknown_topic: str | None = None
        attempt = 0
        while True:
            try:
                # every subscription written before these records were read takes part
                await self.store.sync()
                plan = plan_batch(
                    self.gate,
                    self.router,
                    records,
                    refused,
                    today=dutch_today(),
                    publishers=publishers,
                )
                errors = await send_each(self.producer, plan.outputs)
            except (KafkaError, KafkaUnavailable) as exc:
                error: BaseException = exc
            else:
                faulty = {plan.sources[i] for i, e in enumerate(errors) if _for_size(e)}
                if faulty:
                    for index in faulty:
                        refused[index] = refused.get(index, 0) + 1
                        if refused[index] > _MAX_REFUSALS:
                            raise WorkerFailed(
                                "the invalid topic refuses even a truncated dead letter "
                                "(check its max.message.bytes)"
                            )
                    log.warning(
                        "%d ingress records make records over the broker's size limit: "
                        "dead-lettered as %s",
                        len(faulty),
                        TOO_LARGE,
                    )
                    continue  # the whole batch again, in order, with those dead-lettered
                failed = [(i, e) for i, e in enumerate(errors) if e is not None]
                if not failed:
                    if first_failure is not None:
                        log.info("produce works again after %d failed attempts", attempt)
                        self.progress.mended()
                    _log_refusals(plan, publishers)
                    return plan
                where, error = failed[0]
                topic = plan.outputs[where][0]
                if missing_for_good(error, topic, unknown_topic):
                    raise WorkerFailed(f"topic {topic} does not exist") from error
                if isinstance(error, UnknownTopicOrPartitionError):
                    unknown_topic = topic  # remembered for the next attempt
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            attempt += 1
            failing_for = now - first_failure
            delay = PRODUCE.wait(error, attempt=attempt, elapsed_s=failing_for)
            if delay is None:
                raise WorkerFailed(f"produce failed for good: {_reason(error)}") from error
            if failing_for >= BROKEN_AFTER_S:
                self.progress.broken(
                    f"produce failing for {failing_for:.0f}s ({_reason(error)}); retrying"
                )
            log.warning(
                "produce failed (%s, attempt %d); the batch is retried in %.1fs",
                _reason(error),
                attempt,
                delay,
            )
            await asyncio.sleep(delay)


_REFUSALS: Final = frozenset({"not_a_publisher", "type_not_granted", "source_not_granted"})


def _log_refusals(plan: Plan, publishers: Sequence[Client | None]) -> None:
    """A warning per publisher and code for records outside a grant (the security log):
    the client id, the code and a count, never a record's content."""
    counts: dict[tuple[str, str], int] = {}
    for index, outcome in enumerate(plan.outcomes):
        publisher = publishers[index] if index < len(publishers) else None
        if publisher is not None and isinstance(outcome, Rejected) and outcome.code in _REFUSALS:
            counts[publisher.id, outcome.code] = counts.get((publisher.id, outcome.code), 0) + 1
    for (client_id, code), count in sorted(counts.items()):
        log.warning(
            "Kafka publisher %s: records outside its publish grant dead-lettered: %d (%s)",
            client_id,
            count,
            code,
        )


async def produce(producer: Producer, outcomes: Iterable[Accepted | Rejected]) -> None:
    """Send every outcome's record and wait until the broker has all of them (acks=all)."""
    await send_all(producer, ((o.topic, o.record) for o in outcomes))
