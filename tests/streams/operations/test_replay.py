"""Replays against a real broker: ids and windows into one subscription, marked `replay`, in
per-key order; killed half way and resumed; beyond retention; one replay at a time."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import RecordsToDelete
from aiokafka.errors import KafkaConnectionError
from clients import OWNER

from streams.config import Settings
from streams.contract.attributes import OVERLEDEN, VERHUISD, ZAAK_GEMUTEERD, pseudonym
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.ingress.gate import Accepted, Gate
from streams.kafka.clients import make_admin, make_producer
from streams.kafka.topics import Topics
from streams.kafka.transport import security_options
from streams.operations.replay import Replayer
from streams.operations.replay_log import ReplayStatus, supersedes
from streams.operations.replay_request import BeyondRetention, ReplayError, ReplayRequest
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

pytestmark = pytest.mark.kafka

KEY = b"test-pseudonym-key"
TODAY = dutch_today()
DEADLINE_S = 60.0
FIELDS = ["soort", "nieuwAdres.gemeentecode", "datumOverlijden", "actie", "bronorganisatie"]


def subscription(id_: str, **extra: Any) -> Subscription:
    return Subscription.model_validate(
        {
            "id": id_,
            "sink": f"deliver.{id_}",
            "protocol": "KAFKA",
            "types": [VERHUISD, OVERLEDEN, ZAAK_GEMUTEERD],
            "owner": OWNER,
            "purpose": "test",
            "fields": FIELDS,
            **extra,
        }
    )


async def publish(settings: Settings, topics: Topics, n: int, seed: int = 7) -> list[Accepted]:
    """`n` mixed events written into their events topics, in order, as the validator does."""
    gate, producer = Gate(topics, KEY), make_producer(settings, "test-publisher")
    accepted = [gate.accept(e, today=TODAY) for e in EventFactory(seed, today=TODAY).mixed(n)]
    await producer.start()
    try:
        futures = [
            await producer.send(
                a.topic, a.record.value, key=a.record.key, headers=list(a.record.headers)
            )
            for a in accepted
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return accepted


@pytest.fixture
async def replayers(
    settings: Settings, store: SubscriptionStore
) -> AsyncIterator[Callable[..., Awaitable[Replayer]]]:
    made: list[Replayer] = []

    async def make(**options: Any) -> Replayer:
        replayer = Replayer(settings, store, **options)
        await replayer.start()
        made.append(replayer)
        return replayer

    yield make
    for replayer in made:
        await replayer.stop()


def replayed(records: list[Any], replay_id: str | None = None) -> list[dict[str, Any]]:
    """The structured CloudEvents of the deliver topic that carry `replay` (this id)."""
    events = [json.loads(r.value) | {"_key": r.key} for r in records]
    return [e for e in events if "replay" in e and replay_id in (None, e["replay"])]


def assert_per_key_order(events: list[dict[str, Any]], accepted: list[Accepted]) -> None:
    """Per (type, key): the first occurrences come in the order of the events topic."""
    position = {a.event.id: i for i, a in enumerate(accepted)}
    seen: set[str] = set()
    per_key: dict[tuple[str, bytes], list[int]] = defaultdict(list)
    for e in events:
        if e["id"] not in seen:
            seen.add(e["id"])
            per_key[(e["type"], e["_key"])].append(position[e["id"]])
    assert all(seq == sorted(seq) for seq in per_key.values())


async def until(check: Callable[[], bool]) -> None:
    """Wait until `check()` holds, polling; fails after the deadline."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


async def finished(replayer: Replayer, status: ReplayStatus) -> ReplayStatus:
    async with asyncio.timeout(DEADLINE_S):
        done = await replayer.wait(status.id)
    assert done.state == "done", done.error
    return done


async def test_ids_and_window_replays_arrive_marked_in_per_key_order(
    settings: Settings, store: SubscriptionStore, bus_topics: Topics, replayers: Any,
    read_topic: Any,
) -> None:  # fmt: skip
    sub = await store.put(subscription("s1", filters=[{"prefix": {"type": "nl.brp."}}]))
    start = datetime.now(UTC) - timedelta(seconds=1)
    accepted = await publish(settings, bus_topics, 300)
    end = datetime.now(UTC) + timedelta(seconds=1)
    persons = [a for a in accepted if a.event.type in (VERHUISD, OVERLEDEN)]
    lost = [a.event.id for a in persons[::7]]
    replayer = await replayers()

    by_ids = await replayer.submit(sub.id, ReplayRequest(ids=lost), actor="beheer")
    done = await finished(replayer, by_ids)
    assert (done.matched, done.written) == (len(lost), len(lost))
    records = await read_topic(bus_topics.deliver(sub.id), count=len(lost))
    events = replayed(records, by_ids.id)
    assert sorted(e["id"] for e in events) == sorted(lost)
    assert_per_key_order(events, accepted)
    # the current projection applies: only the subscription's fields are in `data`
    assert all(set(e["data"]) <= {"soort", "nieuwAdres", "datumOverlijden"} for e in events)

    window = ReplayRequest.model_validate({"from": start.isoformat(), "to": end.isoformat()})
    whole = await finished(replayer, await replayer.submit(sub.id, window, actor="beheer"))
    assert whole.scanned == len(accepted)
    assert whole.written == len(persons)  # the zaak events do not match the filter
    records = await read_topic(bus_topics.deliver(sub.id), count=len(lost) + len(persons))
    events = replayed(records, whole.id)
    assert sorted(e["id"] for e in events) == sorted(a.event.id for a in persons)
    assert_per_key_order(events, accepted)
    # audit records of replays are written where an actor asks (the API, the CLI): see
    # tests/streams/http/test_audit_trail.py and tests/streams/cli/test_cli_audit.py


async def test_a_replay_killed_half_way_resumes_without_loss_or_reordering(
    settings: Settings, store: SubscriptionStore, bus_topics: Topics, replayers: Any,
    read_topic: Any,
) -> None:  # fmt: skip
    sub = await store.put(subscription("s2"))
    start = datetime.now(UTC) - timedelta(seconds=1)
    accepted = await publish(settings, bus_topics, 600, seed=3)
    first = await replayers(rate=600.0, checkpoint_every=40)
    request = ReplayRequest.model_validate({"from": start.isoformat()})
    status = await first.submit(sub.id, request, actor="beheer")
    await until(lambda: status.written >= 200)  # checkpointed: confirmed in the deliver topic
    await first.stop()  # killed half way: the task is cancelled, the rest never written
    assert status.state == "running" and status.written < len(accepted)

    second = await replayers(checkpoint_every=40)
    resumed = second.status(status.id)
    assert resumed is not None and 200 <= resumed.written < len(accepted)
    checkpoint = resumed.written
    second.resume(status.id)
    done = await finished(second, resumed)
    assert done.written >= len(accepted)
    records = await read_topic(bus_topics.deliver(sub.id), count=len(accepted))
    events = replayed(records, status.id)
    assert {e["id"] for e in events} == {a.event.id for a in accepted}  # nothing lost
    assert_per_key_order(events, accepted)
    duplicates = len(events) - len(accepted)
    print(f"resumed after {checkpoint} of {len(accepted)}; {duplicates} duplicates")


async def test_a_window_beyond_retention_is_refused_naming_the_oldest_time(
    settings: Settings, store: SubscriptionStore, bus_topics: Topics, replayers: Any,
) -> None:  # fmt: skip
    sub = await store.put(subscription("s3"))
    long_ago = datetime.now(UTC) - timedelta(days=1)
    accepted = await publish(settings, bus_topics, 60)
    topic = bus_topics.events(VERHUISD)
    admin = make_admin(settings.kafka)
    await admin.start()
    try:  # retention removed the first records of one partition
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(2)})
    finally:
        await admin.close()
    replayer = await replayers()
    request = ReplayRequest.model_validate({"from": long_ago.isoformat()})
    with pytest.raises(BeyondRetention) as refused:
        await replayer.submit(sub.id, request, actor="beheer")
    oldest = refused.value.oldest
    assert long_ago < oldest <= datetime.now(UTC)
    assert oldest.strftime("%Y-%m-%dT%H:%M:%S") in str(refused.value)
    # from the oldest available time on, the replay is accepted
    later = ReplayRequest.model_validate({"from": oldest.isoformat()})
    assert (await replayer.submit(sub.id, later, actor="beheer")).state == "queued"
    assert accepted


async def test_two_replays_of_one_subscription_run_one_after_the_other(
    settings: Settings, store: SubscriptionStore, bus_topics: Topics, replayers: Any,
    read_topic: Any,
) -> None:  # fmt: skip
    sub = await store.put(subscription("s4"))
    other = await store.put(subscription("s5"))
    start = datetime.now(UTC) - timedelta(seconds=1)
    accepted = await publish(settings, bus_topics, 200)
    # slow enough (about 3 s a replay) that the first is surely still running when checked
    replayer = await replayers(rate=60.0)
    request = ReplayRequest.model_validate({"from": start.isoformat()})
    one = await replayer.submit(sub.id, request, actor="beheer")
    two = await replayer.submit(sub.id, request, actor="beheer")
    elsewhere = await replayer.submit(other.id, request, actor="beheer")
    assert two.state == "queued"
    await until(lambda: elsewhere.state == "running")  # another subscription does not wait
    assert one.state == "running" and two.state == "queued"
    one, two = await finished(replayer, one), await finished(replayer, two)
    assert one.finished_at is not None and two.started_at is not None
    assert one.finished_at <= two.started_at
    records = await read_topic(bus_topics.deliver(sub.id), count=2 * len(accepted))
    for p in range(settings.kafka.deliver_partitions):  # per partition: all of one, then two
        marks = [json.loads(r.value)["replay"] for r in records if r.partition == p]
        assert marks == sorted(marks, key=lambda mark: mark != one.id)
    assert len(records) == 2 * len(accepted)
    await finished(replayer, elsewhere)


@pytest.mark.parametrize("first", [VERHUISD, OVERLEDEN])
async def test_a_move_and_a_death_in_one_millisecond_come_back_in_acceptance_order(
    settings: Settings, store: SubscriptionStore, bus_topics: Topics, replayers: Any,
    read_topic: Any, first: str,
) -> None:  # fmt: skip
    sub = await store.put(subscription("s6"))
    factory = EventFactory(5, today=TODAY)
    move = factory.verhuisd()
    death = factory.overleden()
    death = death.with_data({**death.data, "bsn": move.data["bsn"]})  # one person
    events = [move, death] if first == VERHUISD else [death, move]
    gate = Gate(bus_topics, KEY)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        acks="all",
        **security_options(settings.kafka),
    )
    accepted = [gate.accept(e, today=TODAY) for e in events]
    assert accepted[0].record.key == accepted[1].record.key
    stamp = int(datetime.now(UTC).timestamp() * 1000)
    await producer.start()
    try:  # one millisecond for both, as when the bus accepts them back to back
        for a in accepted:
            await (
                await producer.send(
                    a.topic, a.record.value, key=a.record.key,
                    headers=list(a.record.headers), timestamp_ms=stamp,
                )
            )  # fmt: skip
    finally:
        await producer.stop()
    replayer = await replayers()
    request = ReplayRequest(ids=tuple(e.id for e in events))
    await finished(replayer, await replayer.submit(sub.id, request, actor="beheer"))
    records = await read_topic(bus_topics.deliver(sub.id), count=2)
    assert [e["id"] for e in replayed(records)] == [e.id for e in events]


async def test_a_volgindicatie_opens_no_past_from_before_it_was_set(
    settings: Settings, store: SubscriptionStore, bus_topics: Topics, replayers: Any,
    read_topic: Any,
) -> None:  # fmt: skip
    """A new volgindicatie plus a replay of the whole retention used to deliver that person's
    past; the past still comes where the subscription's filters match it anyway."""
    only = await store.put(subscription("s7", volgindicatiesOnly=True))
    deaths = await store.put(subscription("s8", filters=[{"exact": {"type": OVERLEDEN}}]))
    factory = EventFactory(9, today=TODAY)
    old_move, old_death, new_move = factory.verhuisd(), factory.overleden(), factory.verhuisd()
    bsn = old_move.data["bsn"]
    old_death = old_death.with_data({**old_death.data, "bsn": bsn})
    new_move = new_move.with_data({**new_move.data, "bsn": bsn})
    gate = Gate(bus_topics, KEY)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        acks="all",
        **security_options(settings.kafka),
    )
    start = datetime.now(UTC) - timedelta(minutes=2)
    an_hour_ago = int((datetime.now(UTC) - timedelta(hours=1)).timestamp() * 1000)
    await producer.start()
    try:

        async def send(accepted: Accepted, timestamp_ms: int | None = None) -> None:
            record = accepted.record
            await (
                await producer.send(
                    accepted.topic, record.value, key=record.key,
                    headers=list(record.headers), timestamp_ms=timestamp_ms,
                )
            )  # fmt: skip

        for event in (old_move, old_death):  # recorded an hour before anyone followed
            await send(gate.accept(event, today=TODAY), an_hour_ago)
        person = pseudonym(bsn, settings.security.pseudonym_key_bytes())
        for sub in (only, deaths):
            await store.follow(sub.id, person, None)
        await send(gate.accept(new_move, today=TODAY))
    finally:
        await producer.stop()
    end = datetime.now(UTC) + timedelta(seconds=1)
    replayer = await replayers()
    window = ReplayRequest(start=start - timedelta(hours=2), end=end)
    expected = {only.id: [new_move.id], deaths.id: [old_death.id, new_move.id]}
    for sub_id, ids in expected.items():
        done = await finished(replayer, await replayer.submit(sub_id, window, actor="beheer"))
        assert done.matched == len(ids), sub_id
        records = await read_topic(bus_topics.deliver(sub_id), count=len(ids))
        assert [e["id"] for e in replayed(records)] == ids


def test_one_owner_at_a_time_a_claim_counts_only_after_the_lease() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    lease = timedelta(seconds=30)

    def written(owner: str, when: datetime, state: str = "running") -> ReplayStatus:
        return ReplayStatus.model_validate(
            {"id": "r", "subscription": "s", "request": {}, "requested_by": "beheer",
             "requested_at": at, "state": state, "owner": owner, "saved_at": when,
             "lease_until": when + lease if state == "running" else None}
        )  # fmt: skip

    a = written("a", at)
    assert supersedes(None, a) and supersedes(a, written("a", at + timedelta(seconds=10)))
    assert not supersedes(a, written("b", at + timedelta(seconds=29)))  # still a's lease
    b = written("b", at + timedelta(seconds=31))
    assert supersedes(a, b)  # a's lease ran out: b's claim counts
    assert not supersedes(b, written("a", at + timedelta(seconds=32)))  # a woke up too late
    done = written("b", at + timedelta(seconds=40), state="done")
    assert supersedes(b, done) and not supersedes(done, written("b", at + timedelta(days=1)))


async def test_a_missing_replays_topic_is_a_clear_error_naming_it(settings: Settings) -> None:
    from streams.exceptions import KafkaUnavailable
    from streams.kafka.clients import make_producer
    from streams.operations.replay_log import ReplayLog

    kafka = settings.kafka.model_copy(
        update={"topic_prefix": f"{settings.kafka.topic_prefix}-none", "request_timeout_s": 1.0}
    )
    alone = settings.model_copy(update={"kafka": kafka})  # a prefix whose topics were never made
    producer = make_producer(alone, "test-replay-log")
    try:
        log = ReplayLog(alone, producer)
        with pytest.raises(KafkaUnavailable, match=r"topic t.*-none\.replays does not exist"):
            await log.start()
    finally:
        await producer.stop()


async def test_a_replay_stops_once_its_owners_grant_is_gone(
    settings: Settings, store: SubscriptionStore, bus_topics: Topics, replayers: Any
) -> None:
    """It used to run to the end: a replay never looked at the owner's grant again."""
    sub = await store.put(subscription("s-revoked"))
    start = datetime.now(UTC) - timedelta(seconds=1)
    accepted = await publish(settings, bus_topics, 300, seed=5)
    replayer = await replayers(rate=200.0, checkpoint_every=20)
    request = ReplayRequest.model_validate({"from": start.isoformat()})
    status = await replayer.submit(sub.id, request, actor="beheer")
    await until(lambda: status.written >= 20)
    without = tuple(c for c in settings.clients if c.id != OWNER)
    store.regrant(settings.model_copy(update={"clients": without}))
    async with asyncio.timeout(DEADLINE_S):
        done = await replayer.wait(status.id)
    assert done.state == "failed" and "suspended" in (done.error or "")
    assert done.matched < len(accepted)
    with pytest.raises(ReplayError, match="no active subscription"):
        await replayer.submit(sub.id, request, actor="beheer")


async def test_reading_goes_on_while_a_send_waits_and_nothing_follows_a_failed_one(
    settings: Settings, store: SubscriptionStore, bus_topics: Topics, replayers: Any
) -> None:
    """It used to read nothing while a send waited (the failing send below waits for the
    reader, so it hung). Sends are queued behind each other: one that fails stops the ones
    queued after it, so no later record of a key overtakes an earlier one."""
    sub = await store.put(subscription("s-send-fails"))
    start = datetime.now(UTC) - timedelta(seconds=1)
    await publish(settings, bus_topics, 200, seed=3)
    replayer = await replayers(checkpoint_every=10)
    calls: list[int] = []
    real = replayer._producer.send_batched
    running: list[ReplayStatus] = []

    async def failing_third(topic: str, records: Any) -> Any:
        calls.append(len(records))
        if len(calls) == 3:  # fails once the reader has queued the next send behind it
            scanned = running[0].scanned
            await until(lambda: running[0].scanned > scanned)
            await asyncio.sleep(0.05)
            raise KafkaConnectionError("broker gone")
        return await real(topic, records)

    replayer._producer.send_batched = failing_third  # type: ignore[method-assign]
    request = ReplayRequest.model_validate({"from": start.isoformat()})
    status = await replayer.submit(sub.id, request, actor="beheer")
    running.append(status)
    async with asyncio.timeout(DEADLINE_S):
        done = await replayer.wait(status.id)
    assert done.state == "failed"
    assert len(calls) == 3
    assert done.written <= sum(calls[:2])
