"""Replays: events from the `gemeentebus.events.<type>` topics, again, into one subscription.

A `ReplayRequest` (`streams.operations.replay_request`) names a window, types or event ids.
The `Replayer` resolves the window to offsets once, then reads each partition in order, keeps
what the subscription's *current* filters and volgindicaties match, strips it to the current
`fields`, marks it with the extension attribute `replay` (the replay id) and appends it to
`gemeentebus.deliver.<id>` with the source record's key, through one idempotent producer.
Partitions of several types are merged by record timestamp, ties within one millisecond
broken by the gate's acceptance order, so one person's move and death come back in the order
the bus accepted them.

How replayed events meet live ones: both are appended to the same deliver topic, so per key
they interleave in append order; a subscriber may see an event again, marked `replay`, and
dedupes on source+id. In one process one replay per subscription runs at a time, others
queue (FIFO).

Progress (scanned, matched, written, the next offset per partition) goes to the compacted
`gemeentebus.replays` topic every `checkpoint_every` records, after the records written so
far are confirmed (acks=all); reading goes on while a checkpoint waits for its records, with
one checkpoint in flight at a time, and while a batch waits to be sent (sends queue behind
each other; nothing is sent after one that failed). The lease, the owner and the
subscription's state are looked at before each write, not each record. Matching and
encoding go the fast way of `streams.routing.readback` (only what matching needs is
decoded). The HTTP API and the CLI record every request in the audit trail
(`streams.operations.audit`).

Resuming after a crash, with several API processes: the process that accepts a replay owns it
and holds a lease on it (`replay.lease_s`, default 30 s) that it renews three times a lease,
in the replays topic (`streams.operations.replay_log` has the rule every process applies in
topic order, so all agree on the owner; `replay_lease` holds this process's leases). Every API
process follows that topic; one that sees an unfinished replay whose lease ran out (its owner
was killed, or paused that long) claims it, and the first claim in the topic wins; the winner
resumes it from its last checkpoint: nothing is lost, and per key the first occurrences keep
their order (duplicates allowed). A clean stop gives its leases up, so another process takes
over at once. Why a lease and not one elected runner: any API process can take a request,
nothing but Kafka is shared, and a lease needs no group coordination; its cost is that a
replay waits up to one lease after a crash, and that an owner paused past its lease writes
duplicates until it reads the claim that replaced it (at most one renewal interval).

`replay_to_end` runs one replay in the calling process and reports its progress to a plain
callback (the CLI draws it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aiokafka.errors import KafkaError

from streams.config import Settings
from streams.contract.headers import header_text
from streams.contract.record import KafkaRecord
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics, bus_topics, create_topics
from streams.kafka.window import consumer, merged
from streams.operations.replay_lease import Leases, Lost
from streams.operations.replay_log import ReplayLog, ReplayStatus
from streams.operations.replay_request import (
    ReplayError,
    ReplayRequest,
    replay_window,
    tp_name,
    tp_of,
)
from streams.routing.readback import Readback
from streams.routing.store import SubscriptionStore

__all__ = ["Replayer", "replay_to_end"]

log = logging.getLogger(__name__)


# Matched records sent together, as whole batches (a checkpoint sends what it has too).
_SEND_EVERY: Final = 500
# `send_batched` calls queued but not yet handed to the producer; reading waits beyond.
_SENDS_AHEAD: Final = 4
# Records read between two looks at the lease, the owner and the live progress.
_SYNC_EVERY: Final = 500
# ... or once this many seconds passed: a paced replay (`replay.rate`) of a few events a
# second writes what it matched and shows its progress at once, not 500 records later.
_SYNC_S: Final = 0.2


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
    """Runs replays, one at a time per subscription in this process; `start()` before use,
    `stop()` after.

    `store` must be started. The replays topic is followed while the Replayer runs, so
    `status` answers for replays any process runs. With `adopt` (the API's), an unfinished
    replay whose owner's lease ran out is taken over and resumed from its last checkpoint;
    `stop()` gives up the leases this process holds, so another takes over at once.
    """

    def __init__(
        self,
        settings: Settings,
        store: SubscriptionStore,
        *,
        rate: float | None = None,
        checkpoint_every: int | None = None,
        lease_s: float | None = None,
        adopt: bool = True,
    ) -> None:
        self.settings, self.store = settings, store
        self.topics = Topics(settings.kafka.topic_prefix)
        self.rate = rate or settings.replay.rate
        self.checkpoint_every = checkpoint_every or settings.replay.checkpoint_every
        self.lease = timedelta(seconds=lease_s or settings.replay.lease_s)
        self.adopt = adopt
        self._key = settings.security.pseudonym_key_bytes()
        self._producer = make_producer(settings, "replayer")
        self._log = ReplayLog(settings, self._producer)
        self._leases = Leases(self._log, lease=self.lease)
        self._mine = self._leases.mine  # what this process runs or ran (live)
        self._queues: dict[str, asyncio.Queue[str]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._keeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create the replays and audit topics if missing, connect, read the replays topic
        (and follow it), and take over the unfinished replays nobody holds a lease on."""
        wanted = {self.topics.replays, self.topics.audit}
        specs = [s for s in bus_topics(self.settings.kafka, ()) if s.name in wanted]
        await create_topics(self.settings.kafka, specs)
        await self._producer.start()
        try:
            await self._log.start()
            if self.adopt:
                await self._leases.claim(self._enqueue)
        except BaseException:
            await self._producer.stop()
            raise
        self._keeper = asyncio.create_task(self._keep(), name="replays-leases")

    async def stop(self) -> None:
        """Stop the running replays where they are and give up their leases (another process
        resumes them from their checkpoint)."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        for task in self._workers.values():
            task.cancel()
        for task in self._workers.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()
        try:
            async with asyncio.timeout(self.settings.kafka.request_timeout_s):
                await self._leases.release()
        except (KafkaError, TimeoutError) as exc:
            log.warning(
                "giving up replay leases failed (%s): others resume them once they run out",
                type(exc).__name__,
            )
        await self._log.stop()
        await self._producer.stop()

    def status(self, replay_id: str) -> ReplayStatus | None:
        """A replay's progress: live if this process runs it, else as last written."""
        return self._mine.get(replay_id) or self._log.statuses.get(replay_id)

    def unfinished(self) -> list[ReplayStatus]:
        """The replays not yet done or failed, of any process (this one's live)."""
        every = {**self._log.statuses, **self._mine}
        return [status for status in every.values() if status.unfinished]

    async def submit(
        self, subscription_id: str, request: ReplayRequest, *, actor: str
    ) -> ReplayStatus:
        """Check and queue a replay; `ReplayError` (`BeyondRetention`) when it cannot be done."""
        subscription = self.store.get(subscription_id)
        if subscription is None or not subscription.active:
            raise ReplayError(f"no active subscription {subscription_id}")
        starts, ends = await replay_window(self.settings, subscription, request)
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
        self._mine[status.id] = status
        await self._leases.save(status)
        self._enqueue(status)
        return status

    def resume(self, replay_id: str) -> ReplayStatus:
        """Queue an unfinished replay here, from its checkpoint (a Replayer that does not
        `adopt`); it runs only if no other process holds a lease on it."""
        mine = self._mine.get(replay_id)
        if mine is not None and mine.unfinished:
            return mine
        status = self._log.statuses.get(replay_id)
        if status is None:
            raise ReplayError(f"no replay {replay_id}")
        if not status.unfinished:
            raise ReplayError(f"replay {replay_id} is {status.state}")
        taken = status.model_copy(deep=True)
        self._mine[replay_id] = taken
        self._enqueue(taken)
        return taken

    async def wait(self, replay_id: str) -> ReplayStatus:
        """Return once a replay is done or failed (bound it with `asyncio.timeout`)."""

        def over() -> bool:
            status = self.status(replay_id)
            if status is None:
                raise ReplayError(f"no replay {replay_id}")
            return not status.unfinished

        async with self._log.changed:
            await self._log.changed.wait_for(over)
        return self.status(replay_id)  # type: ignore[return-value]

    # -- leases -----------------------------------------------------------------------------

    async def _keep(self) -> None:
        """Renew this process's leases and take over expired ones, three times a lease."""
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            try:
                await self._leases.renew()
                if self.adopt:
                    await self._leases.claim(self._enqueue)
            except KafkaError as exc:  # retried next round; unrenewed, the lease passes on
                log.warning("renewing replay leases failed (%s); trying again", type(exc).__name__)

    # -- the work ---------------------------------------------------------------------------

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
            status = self._mine.get(replay_id)
            if status is None or not status.unfinished:
                continue  # taken over by another process while it waited
            try:
                await self._run(status)
            except asyncio.CancelledError:
                raise
            except Lost:
                log.warning("stopped replay %s: another process runs it now", replay_id)
            except Exception as exc:  # a failed replay is a state, not a crash
                log.exception("replay %s failed", replay_id)
                status.state, status.error = "failed", str(exc)
                status.finished_at = datetime.now(UTC)
                with contextlib.suppress(Exception):
                    await self._leases.save(status)

    async def _run(self, status: ReplayStatus) -> None:
        subscription = self.store.get(status.subscription)
        if subscription is None or not subscription.active:
            raise ReplayError(f"subscription {status.subscription} is gone or retired")
        # a volgindicatie opens no past from before it was set
        since = self.store.followed_since(subscription.id)
        readback = Readback(
            subscription, self._key, followed_since=since, extensions={"replay": status.id}
        )
        ids = set(status.request.get("ids") or ())
        status.state, status.started_at = "running", status.started_at or datetime.now(UTC)
        await self._leases.confirm(status, await self._leases.save(status))
        starts = {tp_of(n): status.positions.get(n, o) for n, o in status.starts.items()}
        ends = {tp_of(n): o for n, o in status.ends.items()}
        target, pace = self.topics.deliver(subscription.id), _Pace(self.rate)
        outs: list[KafkaRecord] = []  # matched, not yet sent: they go in batches
        # sent since the last checkpoint: a task a `send_batched` call, each queued after the
        # one before it (per key order), while reading goes on (aiokafka's `send_batch` waits
        # until the partition's previous batch has gone to the broker)
        pending: list[asyncio.Task[list[asyncio.Future[Any]]]] = []
        sending: list[asyncio.Task[list[asyncio.Future[Any]]]] = []  # every unfinished one
        written = 0  # records in `pending` before the ones of `outs`
        names: dict[tuple[str, int], str] = {}  # a partition's name in `positions`, made once
        # one checkpoint in flight while reading goes on; the next waits for it
        checkpoint: asyncio.Future[None] | None = None
        # counted here, copied into the status every `_SYNC_EVERY` records and before it is
        # copied or written (a pydantic attribute write per record costs more than the rest)
        scanned, matched, positions = status.scanned, status.matched, status.positions
        synced = time.monotonic()  # and at least every `_SYNC_S`: a slow replay shows progress
        reader = consumer(self.settings)
        try:
            await reader.start()  # in the try: a replay stopped while it connects closes it too
            async for record in merged(reader, starts, ends):
                scanned += 1
                out = (
                    readback.deliverable(record)
                    if not ids or header_text(record.headers, "ce_id") in ids
                    else None
                )
                if out is not None:
                    matched += 1
                    await pace.take()
                    outs.append(out)
                where = (record.topic, record.partition)
                name = names.get(where) or names.setdefault(where, f"{where[0]}:{where[1]}")
                positions[name] = record.offset + 1
                due = scanned % self.checkpoint_every == 0
                if (
                    not due
                    and len(outs) < _SEND_EVERY
                    and scanned % _SYNC_EVERY
                    and time.monotonic() - synced < _SYNC_S
                ):
                    continue
                synced = time.monotonic()
                status.scanned, status.matched = scanned, matched
                await self._may_write(status, subscription.id, outs)
                if outs:
                    pending.append(await self._send(target, outs, sending))
                    written, outs = written + len(outs), []
                if due:
                    if checkpoint is not None:
                        await checkpoint
                    at = status.model_copy(update={"positions": dict(status.positions)})
                    checkpoint = asyncio.ensure_future(
                        self._checkpoint(status, at, pending, written)
                    )
                    pending, written = [], 0
            status.scanned, status.matched = scanned, matched
            await self._may_write(status, subscription.id, outs)
            pending.append(await self._send(target, outs, sending))
            if checkpoint is not None:
                await checkpoint
            status.positions = {n: o for n, o in status.ends.items()}
            await self._checkpoint(status, status, pending, written + len(outs))
        finally:
            for task in (checkpoint, *sending, *pending):
                if task is not None:  # stopped or failed: what did not run will not
                    task.cancel()
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await task
            await reader.stop()
        status.state, status.finished_at = "done", datetime.now(UTC)
        await self._leases.save(status)

    async def _send(
        self,
        target: str,
        outs: list[KafkaRecord],
        sending: list[asyncio.Task[list[asyncio.Future[Any]]]],
    ) -> asyncio.Task[list[asyncio.Future[Any]]]:
        """Queue `outs` to be sent after everything queued before (a task giving the batches'
        futures); returns at once unless `_SENDS_AHEAD` sends are still waiting their turn."""
        sending[:] = [task for task in sending if not task.done()]
        while len(sending) >= _SENDS_AHEAD:
            await asyncio.wait([sending.pop(0)])  # its error reaches the checkpoint
        before = sending[-1] if sending else None

        async def send() -> list[asyncio.Future[Any]]:
            if before is not None:
                await before  # in order: nothing goes after a send that failed
            return await self._producer.send_batched(target, outs)

        task = asyncio.ensure_future(send())
        sending.append(task)
        return task

    async def _may_write(
        self, status: ReplayStatus, subscription_id: str, outs: list[KafkaRecord]
    ) -> None:
        """Raise unless this process still runs the replay (`Lost`) and, when there is
        something to write, its subscription is still active; renew the lease first if it ran
        out (never write past it unconfirmed). Checked before each write, not each record."""
        if self._mine.get(status.id) is not status:
            raise Lost(status.id)
        if status.lease_until is None or datetime.now(UTC) >= status.lease_until:
            await self._leases.renew(only=status)
        if outs:
            self._still_active(subscription_id)  # its owner's grant may have gone

    def _still_active(self, subscription_id: str) -> None:
        """`ReplayError` once the subscription is retired, gone or suspended (its owner's
        current grant no longer covers it): the replay stops, `failed`, saying why."""
        current = self.store.get(subscription_id)
        if current is None or not current.active:
            why = current.shown_status if current is not None else "gone"
            raise ReplayError(f"subscription {subscription_id} is {why}: the replay stopped")

    async def _checkpoint(
        self,
        status: ReplayStatus,
        at: ReplayStatus,
        pending: list[asyncio.Task[list[asyncio.Future[Any]]]],
        written: int,
    ) -> None:
        """Save `at`, a copy of `status` taken when `pending` (`written` records) was the last
        of it sent, once the broker confirmed all of `pending`; the replay reads on meanwhile."""
        batches = [future for task in pending for future in await task]
        await asyncio.gather(*batches)  # every record up to the positions is in the topic
        status.written += written
        at.written = status.written
        await self._leases.save(at)
        status.owner, status.saved_at, status.lease_until = at.owner, at.saved_at, at.lease_until


async def replay_to_end(
    settings: Settings,
    subscription_id: str,
    request: ReplayRequest,
    *,
    actor: str,
    progress: Callable[[ReplayStatus], None] | None = None,
    every_s: float = 0.2,
) -> ReplayStatus:
    """Run one replay in this process to its end (it takes over no others) and return how it
    ended; `progress` gets its status once it is queued, then every `every_s` seconds."""
    store = SubscriptionStore(settings, name="replay-cli-store")
    await store.start()
    replayer = Replayer(settings, store, adopt=False)  # a command runs its own replay only
    try:
        await store.ready()
        await replayer.start()
        status = await replayer.submit(subscription_id, request, actor=actor)
        if progress is not None:
            progress(status)
        while status.unfinished:
            await asyncio.sleep(every_s)
            status = replayer.status(status.id) or status
            if progress is not None:
                progress(status)
        return status
    finally:
        await replayer.stop()
        await store.stop()
