"""Replays: events from the `gemeentebus.events.<type>` topics, again, into one subscription.

A `ReplayRequest` names a window (`from`/`to` as RFC 3339 times, or `fromOffsets`/`toOffsets`
per topic-partition) and optionally `types`, or a list of event `ids` (a window bounds the
search). Times are when the bus accepted an event (the record timestamp of its events topic).
The `Replayer` resolves the window to offsets once, then reads each partition in order, keeps
what the subscription's *current* filters and volgindicaties match, strips it to the current
`fields`, marks it with the extension attribute `replay` (the replay id) and appends it to
`gemeentebus.deliver.<id>` with the source record's key, through one idempotent producer.
Partitions of several types are merged by record timestamp, so one person's move and death
come back in the order the bus accepted them.

How replayed events meet live ones: both are appended to the same deliver topic, so per key
they interleave in append order; a subscriber may see an event again, marked `replay`, and
dedupes on source+id. One replay per subscription runs at a time, others queue (FIFO).

Progress (scanned, matched, written, the next offset per partition) goes to the compacted
`gemeentebus.replays` topic every `checkpoint_every` records, after the records written so
far are confirmed (acks=all). A replay killed half way resumes from its last checkpoint:
nothing is lost, and per key the first occurrences keep their order (duplicates are allowed).
Every request is recorded in `gemeentebus.audit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from streams import codec
from streams.app import make_producer
from streams.config import Settings
from streams.exceptions import GemeentebusError
from streams.router import delivery_record
from streams.store import SubscriptionStore
from streams.subscriptions import Subscription
from streams.topics import Topics, bus_topics, create_topics

# The window helpers moved to `streams.window`; re-exported here for existing importers.
from streams.window import Matcher, consumer, merged, offsets_at, oldest_kept, partitions

__all__ = [
    "BeyondRetention",
    "Matcher",
    "ReplayError",
    "ReplayRequest",
    "ReplayStatus",
    "Replayer",
    "audit",
    "consumer",
    "merged",
    "offsets_at",
    "oldest_kept",
    "partitions",
    "run_replay_cli",
]

log = logging.getLogger(__name__)

DEFAULT_RATE: Final = 2000.0  # events written per second
CHECKPOINT_EVERY: Final = 1000  # records scanned between checkpoints
State = Literal["queued", "running", "done", "failed"]


class ReplayError(GemeentebusError):
    """A replay that cannot be done as asked (unknown subscription, bad window)."""


class BeyondRetention(ReplayError):
    """The window starts before the oldest record the events topics still hold."""

    def __init__(self, oldest: datetime) -> None:
        self.oldest = oldest
        super().__init__(
            f"events before {codec.format_time(oldest)} are no longer kept (retention): "
            f"the oldest available time is {codec.format_time(oldest)}; replay from there"
        )


class ReplayRequest(BaseModel):
    """What to replay: a time window, an offset window (`{topic: {partition: offset}}`, the
    topic as its full name or its event type), or event ids (optionally within a window)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    start: AwareDatetime | None = Field(default=None, alias="from")
    end: AwareDatetime | None = Field(default=None, alias="to")
    from_offsets: dict[str, dict[int, int]] | None = Field(default=None, alias="fromOffsets")
    to_offsets: dict[str, dict[int, int]] | None = Field(default=None, alias="toOffsets")
    types: tuple[str, ...] | None = None
    ids: tuple[str, ...] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_window(self) -> ReplayRequest:
        timed = self.start is not None or self.end is not None
        offsets = self.from_offsets is not None or self.to_offsets is not None
        if timed and offsets:
            raise ValueError("give from/to times or fromOffsets/toOffsets, not both")
        if self.ids is None and self.start is None and self.from_offsets is None:
            raise ValueError("give from (a time), fromOffsets, or ids")
        if self.start and self.end and self.end <= self.start:
            raise ValueError("to must be after from")
        return self


class ReplayStatus(BaseModel):
    """One replay as persisted in the replays topic (and answered over HTTP)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    subscription: str
    request: dict[str, Any]
    requested_by: str
    requested_at: datetime
    state: State = "queued"
    error: str | None = None
    scanned: int = 0
    matched: int = 0
    written: int = 0
    total: int = 0  # records in the window (the scan's length)
    starts: dict[str, int] = Field(default_factory=dict)  # "topic:partition" -> first offset
    ends: dict[str, int] = Field(default_factory=dict)  # "topic:partition" -> end (exclusive)
    positions: dict[str, int] = Field(default_factory=dict)  # next offset to read
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None before there is a rate."""
        if self.state != "running" or self.started_at is None or self.scanned == 0:
            return None if self.state != "done" else 0.0
        elapsed = (datetime.now(UTC) - self.started_at).total_seconds()
        return max(self.total - self.scanned, 0) * elapsed / self.scanned

    def public_dict(self) -> dict[str, Any]:
        out = self.model_dump(mode="json", exclude={"starts", "ends"})
        out["etaSeconds"] = self.eta_s()
        return out


# -- names of topic-partitions, and the audit trail -------------------------------------------


def tp_name(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


def _tp(name: str) -> TopicPartition:
    topic, _, partition = name.rpartition(":")
    return TopicPartition(topic, int(partition))


async def audit(
    producer: AIOKafkaProducer, topics: Topics, action: str, actor: str, **what: Any
) -> None:
    """Record an operator action in the audit topic (key: the subscription)."""
    entry = {"action": action, "actor": actor, "at": datetime.now(UTC).isoformat(), **what}
    key = str(what.get("subscription", "")).encode()
    await (await producer.send(topics.audit, json.dumps(entry, default=str).encode(), key=key))


class _Pace:
    """A rate limit: `await pace.take()` once per event keeps the mean at `rate` per second."""

    def __init__(self, rate: float) -> None:
        self.rate, self.count, self.began = rate, 0, time.monotonic()

    async def take(self) -> None:
        self.count += 1
        ahead = self.count / self.rate - (time.monotonic() - self.began)
        if ahead > 0.01:
            await asyncio.sleep(ahead)


class Replayer:
    """Runs replays, one at a time per subscription; `start()` before use, `stop()` after.

    `store` must be started. Status lives in this process and in the replays topic, which
    `start()` reads, so a new Replayer answers for replays an earlier one ran.
    """

    def __init__(
        self,
        settings: Settings,
        store: SubscriptionStore,
        *,
        rate: float = DEFAULT_RATE,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        self.settings, self.store = settings, store
        self.topics = Topics(settings.kafka.topic_prefix)
        self.rate, self.checkpoint_every = rate, checkpoint_every
        self._key = settings.security.pseudonym_key_bytes()
        self._producer = make_producer(settings, "replayer")
        self._statuses: dict[str, ReplayStatus] = {}
        self._queues: dict[str, asyncio.Queue[str]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        """Create the replays and audit topics if missing, connect, and read past replays."""
        wanted = {self.topics.replays, self.topics.audit}
        specs = [s for s in bus_topics(self.settings.kafka, ()) if s.name in wanted]
        await create_topics(self.settings.kafka, specs)
        await self._producer.start()
        reader = consumer(self.settings)
        await reader.start()
        try:
            tps = await partitions(reader, [self.topics.replays])
            ends = await reader.end_offsets(tps)
            async for record in merged(reader, dict(await reader.beginning_offsets(tps)), ends):
                if record.value is None:
                    self._statuses.pop(bytes(record.key or b"").decode(), None)
                else:
                    status = ReplayStatus.model_validate_json(record.value)
                    self._statuses[status.id] = status
        finally:
            await reader.stop()

    async def stop(self) -> None:
        """Stop the running replays where they are (they resume from their checkpoint)."""
        for task in self._workers.values():
            task.cancel()
        for task in self._workers.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()
        await self._producer.stop()

    def status(self, replay_id: str) -> ReplayStatus | None:
        """A replay's progress as this process knows it."""
        return self._statuses.get(replay_id)

    async def submit(
        self, subscription_id: str, request: ReplayRequest, *, actor: str
    ) -> ReplayStatus:
        """Check and queue a replay; `ReplayError` (`BeyondRetention`) when it cannot be done."""
        subscription = self.store.get(subscription_id)
        if subscription is None or not subscription.active:
            raise ReplayError(f"no active subscription {subscription_id}")
        starts, ends = await self._window(subscription, request)
        status = ReplayStatus(
            id=str(uuid.uuid4()),
            subscription=subscription_id,
            request=request.model_dump(mode="json", by_alias=True, exclude_none=True),
            requested_by=actor,
            requested_at=datetime.now(UTC),
            total=sum(max(ends[tp] - starts[tp], 0) for tp in starts),
            starts={tp_name(tp): offset for tp, offset in starts.items()},
            ends={tp_name(tp): offset for tp, offset in ends.items()},
        )
        await self._save(status)
        await audit(
            self._producer, self.topics, "replay", actor,
            subscription=subscription_id, replay=status.id, request=status.request,
        )  # fmt: skip
        self._enqueue(status)
        return status

    def resume(self, replay_id: str) -> ReplayStatus:
        """Queue an unfinished replay again (after a crash or `stop`), from its checkpoint."""
        status = self._statuses.get(replay_id)
        if status is None:
            raise ReplayError(f"no replay {replay_id}")
        if status.state not in ("queued", "running"):
            raise ReplayError(f"replay {replay_id} is {status.state}")
        self._enqueue(status)
        return status

    def resume_unfinished(self) -> list[ReplayStatus]:
        """Queue every unfinished replay again, oldest request first (one process only)."""
        pending = [s for s in self._statuses.values() if s.state in ("queued", "running")]
        return [self.resume(s.id) for s in sorted(pending, key=lambda s: s.requested_at)]

    async def wait(self, replay_id: str) -> ReplayStatus:
        """Return once a replay is done or failed (bound it with `asyncio.timeout`)."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._statuses[replay_id].state not in ("queued", "running")
            )
        return self._statuses[replay_id]

    # -- the work ---------------------------------------------------------------------------

    async def _window(
        self, subscription: Subscription, request: ReplayRequest
    ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        types = [t for t in subscription.types if request.types is None or t in request.types]
        reader = consumer(self.settings)
        await reader.start()
        try:
            tps = await partitions(reader, [self.topics.events(t) for t in types])
            if request.from_offsets is not None or request.to_offsets is not None:
                begins = dict(await reader.beginning_offsets(tps)) if tps else {}
                starts = {**begins, **self._offsets(request.from_offsets)}
                ends = {**await offsets_at(reader, tps, None), **self._offsets(request.to_offsets)}
                if any(starts[tp] < begins[tp] for tp in tps):
                    oldest = await oldest_kept(reader, tps)
                    raise BeyondRetention(oldest or datetime.now(UTC))
            else:
                if request.start is not None:
                    oldest = await oldest_kept(reader, tps)
                    if oldest is not None and request.start < oldest:
                        raise BeyondRetention(oldest)
                    starts = await offsets_at(reader, tps, request.start)
                else:
                    starts = dict(await reader.beginning_offsets(tps)) if tps else {}
                ends = await offsets_at(reader, tps, request.end)
        finally:
            await reader.stop()
        return {tp: starts[tp] for tp in tps}, {tp: ends[tp] for tp in tps}

    def _offsets(self, given: Mapping[str, Mapping[int, int]] | None) -> dict[TopicPartition, int]:
        out = {}
        for name, by_partition in (given or {}).items():
            topic = name if name.startswith(self.topics.events_prefix) else self.topics.events(name)
            out.update({TopicPartition(topic, p): o for p, o in by_partition.items()})
        return out

    def _enqueue(self, status: ReplayStatus) -> None:
        queue = self._queues.setdefault(status.subscription, asyncio.Queue())
        queue.put_nowait(status.id)
        worker = self._workers.get(status.subscription)
        if worker is None or worker.done():
            self._workers[status.subscription] = asyncio.create_task(
                self._work(queue), name=f"replays-{status.subscription}"
            )

    async def _work(self, queue: asyncio.Queue[str]) -> None:
        while not queue.empty():
            replay_id = queue.get_nowait()
            status = self._statuses[replay_id]
            try:
                await self._run(status)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed replay is a state, not a crash
                log.exception("replay %s failed", replay_id)
                failed = status.model_copy(update={"state": "failed", "error": str(exc)})
                failed.finished_at = datetime.now(UTC)
                with contextlib.suppress(Exception):
                    await self._save(failed)
                self._statuses[replay_id] = failed

    async def _run(self, status: ReplayStatus) -> None:
        subscription = self.store.get(status.subscription)
        if subscription is None or not subscription.active:
            raise ReplayError(f"subscription {status.subscription} is gone or retired")
        matcher, ids = Matcher(subscription, self._key), set(status.request.get("ids") or ())
        status.state, status.started_at = "running", status.started_at or datetime.now(UTC)
        await self._save(status)
        starts = {_tp(n): status.positions.get(n, o) for n, o in status.starts.items()}
        ends = {_tp(n): o for n, o in status.ends.items()}
        target, pace = self.topics.deliver(subscription.id), _Pace(self.rate)
        pending: list[asyncio.Future[Any]] = []
        reader = consumer(self.settings)
        await reader.start()
        try:
            async for record in merged(reader, starts, ends):
                status.scanned += 1
                event = matcher.match(record) if not ids or _id_of(record) in ids else None
                if event is not None:
                    status.matched += 1
                    await pace.take()
                    out = delivery_record(event.with_extensions(replay=status.id), record.key)
                    headers = [*out.headers, ("ce_replay", status.id.encode())]
                    pending.append(
                        await self._producer.send(target, out.value, key=out.key, headers=headers)
                    )
                status.positions[f"{record.topic}:{record.partition}"] = record.offset + 1
                if status.scanned % self.checkpoint_every == 0:
                    await self._checkpoint(status, pending)
            status.positions = {n: o for n, o in status.ends.items()}
            await self._checkpoint(status, pending)
        finally:
            await reader.stop()
        status.state, status.finished_at = "done", datetime.now(UTC)
        await self._save(status)

    async def _checkpoint(self, status: ReplayStatus, pending: list[asyncio.Future[Any]]) -> None:
        await asyncio.gather(*pending)  # every record up to the positions is in the topic
        status.written += len(pending)
        pending.clear()
        await self._save(status)

    async def _save(self, status: ReplayStatus) -> None:
        value = status.model_dump_json().encode()
        await (await self._producer.send(self.topics.replays, value, key=status.id.encode()))
        async with self._changed:
            self._statuses[status.id] = status
            self._changed.notify_all()


def _id_of(record: ConsumerRecord[bytes, bytes]) -> str | None:
    for name, value in record.headers or ():
        if name == "ce_id":
            return bytes(value).decode("utf-8", "replace")
    return None


async def run_replay_cli(
    settings: Settings,
    subscription_id: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    types: Iterable[str] | None = None,
    ids: Iterable[str] | None = None,
    actor: str = "cli",
    progress: Callable[[ReplayStatus], None] | None = None,
) -> ReplayStatus:
    """`gemeentebus replay`: run one replay to the end with a rich progress bar (and ETA)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    request = ReplayRequest.model_validate(
        {"from": start, "to": end, "types": list(types) if types else None,
         "ids": list(ids) if ids else None}
    )  # fmt: skip
    store = SubscriptionStore(settings, name="replay-cli-store")
    await store.start()
    replayer = Replayer(settings, store)
    try:
        await store.ready()
        await replayer.start()
        status = await replayer.submit(subscription_id, request, actor=actor)
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[n]}"))
        # Progress on stderr: stdout carries the result, for scripts.
        progress_console = Console(stderr=True)
        with Progress(
            *columns, TimeRemainingColumn(), transient=False, console=progress_console
        ) as bar:
            task = bar.add_task(f"replay into {subscription_id}", total=status.total or 1, n="")
            while status.state in ("queued", "running"):
                await asyncio.sleep(0.2)
                status = replayer.status(status.id) or status
                n = f"{status.written} written of {status.matched} matched"
                bar.update(task, completed=status.scanned, n=n)
                if progress is not None:
                    progress(status)
            bar.update(task, completed=status.total or 1)
        return status
    finally:
        await replayer.stop()
        await store.stop()
