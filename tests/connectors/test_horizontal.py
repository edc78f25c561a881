"""Delivery spread over several processes through the delivery group (issue 16, horizontal):
on a real broker, with a real loopback receiver, 40 subscriptions of 3 partitions each.

Two dispatchers in this process are two delivery processes as far as Kafka can tell: each has
its own consumer in the group `<prefix>.delivery` and its own subscription store. The test
of a process killed without a clean stop spawns a real `gemeentebus run --role delivery`.
Every test checks what the receiver got: every event at least once (exactly once while the
group is stable), per key the first arrivals in order, duplicates counted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from clients import clients_env
from kafka_reading import transport_env
from keys import PSEUDONYM_KEY, SECRETS_KEY
from test_dispatcher import Receiver, Writer, fast, pseudonym, record, subscription, until

from connectors.dispatcher import Dispatcher
from streams.config import Settings
from streams.kafka.topics import Topics
from streams.routing.store import SubscriptionStore

pytestmark = pytest.mark.kafka

SUBSCRIPTIONS = [f"gemeente-{n:02d}" for n in range(40)]
KEYS = 6  # per subscription: every key on each of its 3 partitions, or nearly
DEADLINE_S = 90.0


def key_of(seq: int) -> bytes:
    return pseudonym(seq % KEYS)


@dataclass(frozen=True, slots=True)
class Verdict:
    lost: int
    reordered: int
    duplicated: int


def arrivals(receiver: Receiver) -> dict[str, list[int]]:
    """Per subscription, the sequence numbers it accepted, in arrival order."""
    got: dict[str, list[int]] = defaultdict(list)
    for r in receiver.accepted:
        got[r.headers["Authorization"].removeprefix("Bearer token-")].append(r.event["data"]["seq"])
    return got


def verdict(receiver: Receiver, sent: int) -> Verdict:
    """Of `sent` events to every subscription: lost, reordered (per key, first arrivals
    behind a later event of their key), duplicated (arrivals beyond the first)."""
    got = arrivals(receiver)
    lost = reordered = duplicated = 0
    for sub_id in SUBSCRIPTIONS:
        seqs = got.get(sub_id, [])
        lost += len(set(range(sent)) - set(seqs))
        duplicated += len(seqs) - len(set(seqs))
        latest: dict[bytes, int] = {}
        seen: set[int] = set()
        for seq in seqs:
            if seq in seen:
                continue
            seen.add(seq)
            if seq < latest.get(key_of(seq), -1):
                reordered += 1
            latest[key_of(seq)] = max(seq, latest.get(key_of(seq), -1))
    return Verdict(lost, reordered, duplicated)


def every_partition(settings: Settings) -> frozenset[TopicPartition]:
    topics = [Topics(settings.kafka.topic_prefix).deliver(s) for s in SUBSCRIPTIONS]
    return frozenset(
        TopicPartition(t, p) for t in topics for p in range(settings.kafka.deliver_partitions)
    )


def delivered(dispatcher: Dispatcher) -> int:
    return dispatcher.totals()["delivered"]


class Rounds:
    """Writes one event per key to every subscription a round, in sequence order."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.sent = 0  # events per subscription written so far
        self.rounds = 0
        self.target = 0

    async def write(self, rounds: int, pause_s: float = 0.0) -> None:
        self.target = self.rounds + rounds
        while self.rounds < self.target:
            for sub_id in SUBSCRIPTIONS:
                for seq in range(self.sent, self.sent + KEYS):
                    headers, value = record(seq, key_of(seq))
                    topic = self.writer.topics.deliver(sub_id)
                    await self.writer.producer.send(topic, value, key=key_of(seq), headers=headers)
            await self.writer.producer.flush()
            self.sent += KEYS
            self.rounds += 1
            await asyncio.sleep(pause_s)

    def stream(self, pause_s: float = 0.1, cap: int = 150) -> asyncio.Task[None]:
        """Rounds written in the background until `finish` (at most `cap`): however long a
        rebalance takes on a slow machine, events are still arriving when it is over."""
        return asyncio.create_task(self.write(cap, pause_s))

    def finish(self, more: int = 2) -> None:
        """Stop streaming after `more` rounds beyond those written so far."""
        self.target = min(self.target, self.rounds + more)


@pytest.fixture
async def writer(settings: Settings) -> AsyncIterator[Writer]:
    out = Writer(settings)
    await out.producer.start()
    yield out
    await out.producer.stop()


@pytest.fixture
async def receiver(store: SubscriptionStore) -> AsyncIterator[Receiver]:
    """One receiver for every subscription (told apart by their tokens), all subscribed."""
    hook = await Receiver().start()
    await store.put_many([subscription(s, hook.url) for s in SUBSCRIPTIONS])
    yield hook
    await hook.stop()


@asynccontextmanager
async def delivery_process(
    settings: Settings, store: SubscriptionStore | None = None, name: str = "other"
) -> AsyncIterator[Dispatcher]:
    """A dispatcher with a subscription store of its own (`store`, or a new one)."""
    own = store is None
    if store is None:
        store = SubscriptionStore(settings, name=f"store-{name}")
        await store.start()
        await store.ready()
    dispatcher = Dispatcher(settings.model_copy(update={"delivery": fast()}), store)
    await dispatcher.start()
    try:
        yield dispatcher
    finally:
        await dispatcher.stop()
        if own:
            await store.stop()


async def spawn_delivery(settings: Settings, log: Path) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        **transport_env(settings),
        **clients_env(settings),  # the owners: delivery binds each subscription to its grant
        "GEMEENTEBUS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "GEMEENTEBUS_KAFKA__PARTITIONS": str(settings.kafka.partitions),
        "GEMEENTEBUS_KAFKA__DELIVER_PARTITIONS": str(settings.kafka.deliver_partitions),
        "GEMEENTEBUS_KAFKA__REPLICATION_FACTOR": "1",  # one broker, said explicitly
        "GEMEENTEBUS_KAFKA__MIN_INSYNC_REPLICAS": "1",
        "GEMEENTEBUS_KAFKA__ALLOW_SINGLE_REPLICA": "true",
        "GEMEENTEBUS_KAFKA__ALLOW_PLAINTEXT": "true",  # the test broker: loopback
        "GEMEENTEBUS_HTTP__PORT": "0",
        # the receiver is on loopback, over http (the sink policy of production refuses it)
        "GEMEENTEBUS_DELIVERY__ALLOW_HTTP": "true",
        "GEMEENTEBUS_DELIVERY__ALLOWED_PRIVATE_SINKS": '["127.0.0.0/8", "::1/128"]',
        "GEMEENTEBUS_SECURITY__PSEUDONYM_KEY": PSEUDONYM_KEY,
        "GEMEENTEBUS_SECURITY__SECRETS_KEY": SECRETS_KEY,
    }
    command = [sys.executable, "-m", "streams.cli", "run", "--role", "delivery"]
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(*command, env=env, stdout=out, stderr=out)


async def shared(
    dispatchers: Iterable[Dispatcher], every: frozenset[TopicPartition], within: float = DEADLINE_S
) -> None:
    """Wait until `dispatchers` between them read `every` partition, each a share, none twice."""
    members = list(dispatchers)

    def spread() -> bool:
        held = [d.partitions for d in members]
        return (
            all(held)
            and frozenset().union(*held) == every
            and sum(len(h) for h in held) == len(every)
        )

    await until(spread, within=within)


# -- two processes share the subscriptions ---------------------------------------------------


async def test_two_processes_share_the_partitions_and_deliver_every_event_once_in_key_order(
    settings: Settings, store: SubscriptionStore, writer: Writer, receiver: Receiver
) -> None:
    every = every_partition(settings)
    async with (
        delivery_process(settings, store) as a,
        delivery_process(settings, name="b") as b,
    ):
        await shared([a, b], every)
        rounds = Rounds(writer)
        await rounds.write(5)
        total = rounds.sent * len(SUBSCRIPTIONS)
        await until(lambda: len(receiver.accepted) >= total, within=DEADLINE_S)
        # a process counts a delivery once its answer is in: just after the receiver did
        await until(lambda: delivered(a) + delivered(b) >= total, within=DEADLINE_S)
        shares = len(a.partitions), len(b.partitions)
        counts = delivered(a), delivered(b)
    print(f"\ntwo processes: partitions {shares}, deliveries {counts} of {total}")
    assert verdict(receiver, rounds.sent) == Verdict(lost=0, reordered=0, duplicated=0)
    assert sum(counts) == total and min(counts) > 0  # both delivered, every event once
    assert min(shares) >= len(every) // 3  # spread, not all on one


# -- one stops: the other takes over ---------------------------------------------------------


async def test_a_process_that_stops_leaves_its_partitions_to_the_other(
    settings: Settings, store: SubscriptionStore, writer: Writer, receiver: Receiver
) -> None:
    every = every_partition(settings)
    rounds = Rounds(writer)
    async with delivery_process(settings, store) as a:
        async with delivery_process(settings, name="b") as b:
            await shared([a, b], every)
            writing = rounds.stream()
            await until(lambda: delivered(b) >= 300)
            await b.stop(deadline_s=0.5)  # mid-stream: what is in flight is cut short
            before = delivered(b)  # (it delivers on while it stops)
            stopped_at = rounds.sent
        await until(lambda: a.partitions == every)
        rounds.finish()
        await writing
        total = rounds.sent * len(SUBSCRIPTIONS)
        await until(lambda: verdict(receiver, rounds.sent).lost == 0)
    result = verdict(receiver, rounds.sent)
    print(
        f"\none of two stopped after {before} deliveries (at event {stopped_at} of"
        f" {rounds.sent} per subscription): {total} events, {result}"
    )
    assert stopped_at < rounds.sent  # it stopped mid-stream
    assert result.lost == 0 and result.reordered == 0
    assert delivered(a) >= total - before  # the rest went through the other


async def test_a_killed_process_leaves_its_partitions_to_the_other(
    settings: Settings,
    store: SubscriptionStore,
    writer: Writer,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    every = every_partition(settings)
    rounds = Rounds(writer)
    process = await spawn_delivery(settings, tmp_path / "delivery.log")
    try:
        async with delivery_process(settings, store) as a:
            await until(lambda: bool(a.partitions) and a.partitions != every)  # shared
            writing = rounds.stream()
            # the spawned process has delivered some too
            await until(lambda: len(receiver.accepted) - delivered(a) >= 300)
            process.send_signal(signal.SIGKILL)
            await process.wait()
            killed_at = rounds.sent
            await until(lambda: a.partitions == every)  # after the session timeout
            rounds.finish()
            await writing
            total = rounds.sent * len(SUBSCRIPTIONS)
            await until(lambda: verdict(receiver, rounds.sent).lost == 0)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    result = verdict(receiver, rounds.sent)
    print(
        f"\none of two SIGKILLed at event {killed_at} of {rounds.sent} per subscription:"
        f" {total} events, {result}"
    )
    assert process.returncode == -signal.SIGKILL
    assert killed_at < rounds.sent  # killed mid-stream
    assert result.lost == 0 and result.reordered == 0


# -- a third joins ---------------------------------------------------------------------------


async def test_a_third_process_joining_takes_a_share_and_the_others_keep_delivering(
    settings: Settings, store: SubscriptionStore, writer: Writer, receiver: Receiver
) -> None:
    every = every_partition(settings)
    rounds = Rounds(writer)
    async with (
        delivery_process(settings, store) as a,
        delivery_process(settings, name="b") as b,
    ):
        await shared([a, b], every)
        writing = rounds.stream()
        await until(lambda: delivered(a) + delivered(b) >= 500)
        async with delivery_process(settings, name="c") as c:
            await shared([a, b, c], every)
            joined_at = rounds.sent
            since = delivered(a), delivered(b)
            # the first two go on delivering beside the third, with the couriers they had
            await until(lambda: delivered(a) > since[0] and delivered(b) > since[1])
            await until(lambda: delivered(c) > 0)
            rounds.finish()
            await writing
            await until(lambda: verdict(receiver, rounds.sent).lost == 0)
            shares = len(a.partitions), len(b.partitions), len(c.partitions)
            counts = delivered(a), delivered(b), delivered(c)
            assert a.running == b.running == c.running == frozenset(SUBSCRIPTIONS)
    result = verdict(receiver, rounds.sent)
    print(
        f"\na third joined at event {joined_at} of {rounds.sent} per subscription:"
        f" partitions {shares}, deliveries {counts}, {result}"
    )
    assert joined_at < rounds.sent  # joined mid-stream
    assert min(counts) > 0 and min(shares) >= len(every) // 4
    assert result.lost == 0 and result.reordered == 0
