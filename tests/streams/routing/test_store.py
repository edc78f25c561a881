"""The durable subscription set against a real broker: other processes, restarts, own writes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from streams.config import Settings
from streams.contract.attributes import OVERLEDEN, VERHUISD, pseudonym
from streams.exceptions import KafkaUnavailable, TopicsRefused
from streams.health import Health
from streams.kafka.clients import make_admin, make_producer
from streams.kafka.topics import Topics, TopicSpec, create_topics
from streams.kafka.topics import bus_topics as specs
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

pytestmark = pytest.mark.kafka

KEY = b"test-pseudonym-key"
DEADLINE_S = 30.0


def gemeente(code: str, **extra: Any) -> Subscription:
    moves = {"any": [{"exact": {"gemeentevan": code}}, {"exact": {"gemeentenaar": code}}]}
    residents = {"exact": {"gemeente": code}}
    return Subscription.model_validate(
        {
            "id": f"gemeente-{code}",
            "sink": f"https://gemeente-{code}.example/events",
            "protocol": "HTTP",
            "sinkCredential": {"accessToken": "secret-token"},
            "types": [VERHUISD, OVERLEDEN],
            "filters": [{"any": [moves, residents]}],
            "owner": f"gemeente-{code}",
            "purpose": "basisregistratie",
            **extra,
        }
    )


@asynccontextmanager
async def running(settings: Settings, name: str) -> AsyncIterator[SubscriptionStore]:
    store = SubscriptionStore(settings, name=name)
    await store.start()
    try:
        async with asyncio.timeout(DEADLINE_S):
            await store.ready()
        yield store
    finally:
        await store.stop()


async def eventually(store: SubscriptionStore, id_: str, check: Callable[[Any], bool]) -> Any:
    async with asyncio.timeout(DEADLINE_S):
        return await store.wait_for(id_, check)


async def test_put_and_delete_reach_another_process(settings: Settings, bus_topics: Topics) -> None:
    async with running(settings, "api") as api, running(settings, "router") as router:
        amsterdam = await api.put(gemeente("0363"))
        seen = await eventually(router, amsterdam.id, lambda s: s is not None)
        assert seen.record_dict() == amsterdam.record_dict()
        # the whole record travels, the token included (the deliverer needs it)
        assert seen.sink_credential.access_token.get_secret_value() == "secret-token"
        assert [s.id for s in router.index] == [amsterdam.id]

        await api.delete(amsterdam.id)
        await eventually(router, amsterdam.id, lambda s: s is None)
        assert len(router.index) == 0


async def test_put_creates_the_subscription_topics(settings: Settings, bus_topics: Topics) -> None:
    async with running(settings, "api") as api:
        await api.put(gemeente("0344"))
    # what a producer sees (it waits for new topics to reach the metadata, then answers)
    producer = make_producer(settings, "check")
    await producer.start()
    try:
        deliver, dlq = bus_topics.deliver("gemeente-0344"), bus_topics.dlq("gemeente-0344")
        assert len(await producer.partitions_for(deliver)) == settings.kafka.deliver_partitions
        assert len(await producer.partitions_for(dlq)) == settings.kafka.dlq_partitions
    finally:
        await producer.stop()


def _partitioned(settings: Settings, deliver: int, dlq: int) -> Settings:
    kafka = settings.kafka.model_copy(update={"deliver_partitions": deliver, "dlq_partitions": dlq})
    return settings.model_copy(update={"kafka": kafka})


async def _partition_counts(settings: Settings, names: list[str]) -> dict[str, int]:
    """Partitions per topic as the cluster's metadata has them now (no waiting: `put_many`
    returns only once they are there)."""
    admin = make_admin(settings, "check")
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}


async def test_put_many_creates_every_topic_then_writes_every_record(
    settings: Settings, bus_topics: Topics
) -> None:
    settings = _partitioned(settings, deliver=2, dlq=1)
    many = [gemeente(f"{i:04d}") for i in range(200)]
    try:
        async with running(settings, "api") as api:
            await api.put_many(many)
            assert len(api) == 200  # visible here when it returns
            deliver = [bus_topics.deliver(s.id) for s in many]
            dlq = [bus_topics.dlq(s.id) for s in many]
            counts = await _partition_counts(settings, deliver + dlq)
        assert counts == {**dict.fromkeys(deliver, 2), **dict.fromkeys(dlq, 1)}
        async with running(settings, "other") as other:  # another process reads all of them
            assert {s.id: s.record_dict() for s in other} == {s.id: s.record_dict() for s in many}
    finally:
        await drop_topics(settings)


async def drop_topics(settings: Settings) -> None:
    """Delete this test's topics: hundreds of them on a shared broker slow every test."""
    admin = make_admin(settings, "cleanup")
    await admin.start()
    try:
        head = f"{settings.kafka.topic_prefix}."
        mine = [t for t in await admin.list_topics() if t.startswith(head)]
        for start in range(0, len(mine), 500):
            await admin.delete_topics(mine[start : start + 500])
    finally:
        await admin.close()


async def test_put_many_writes_no_record_for_a_subscription_whose_topic_is_refused(
    settings: Settings, bus_topics: Topics
) -> None:
    # Kafka refuses a topic whose name differs from an existing one's only in '.' vs '_'
    refused = bus_topics.deliver("gemeente-0002")
    await create_topics(settings.kafka, [TopicSpec(refused.replace(".", "_"), 1)])
    batch = [gemeente(f"{i:04d}") for i in range(5)]
    async with running(settings, "api") as api:
        with pytest.raises(TopicsRefused) as raised:
            await api.put_many(batch)
        assert raised.value.not_written == ["gemeente-0002"]
        assert list(raised.value.refused) == [refused]
        assert "InvalidTopicError" in str(raised.value) and "gemeente-0002" in str(raised.value)
    async with running(settings, "other") as other:
        assert sorted(s.id for s in other) == ["gemeente-0000", "gemeente-0001", "gemeente-0003",
                                               "gemeente-0004"]  # fmt: skip
    others = [bus_topics.deliver(s.id) for s in batch if s.id != "gemeente-0002"]
    assert set(await _partition_counts(settings, others)) == set(others)

    # the cause gone, the same batch again puts the one left out (and leaves the rest)
    await make_room(settings, refused.replace(".", "_"))
    async with running(settings, "api") as api:
        await api.put_many(batch)
    async with running(settings, "other") as other:
        assert sorted(s.id for s in other) == [s.id for s in batch]


async def make_room(settings: Settings, topic: str) -> None:
    """Delete `topic` and wait until the cluster no longer has it."""
    admin = make_admin(settings, "check")
    await admin.start()
    try:
        await admin.delete_topics([topic])
        async with asyncio.timeout(DEADLINE_S):
            while topic in await admin.list_topics():  # noqa: ASYNC110 - polled
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def test_the_set_survives_a_restart(settings: Settings, bus_topics: Topics) -> None:
    async with running(settings, "first") as first:
        for code in ("0363", "0344", "0599"):
            await first.put(gemeente(code))
        await first.delete("gemeente-0599")
        await first.put(gemeente("0344", purpose="changed"))

    async with running(settings, "restarted") as restarted:
        # ready() alone is enough: everything written before the start is applied
        assert sorted(s.id for s in restarted) == ["gemeente-0344", "gemeente-0363"]
        changed = restarted.get("gemeente-0344")
        assert changed is not None and changed.purpose == "changed"


async def test_read_your_writes(settings: Settings, bus_topics: Topics) -> None:
    followed = pseudonym("999993653", KEY)
    async with running(settings, "api") as api:
        amsterdam = await api.put(gemeente("0363"))
        stored = api.get(amsterdam.id)  # no waiting: put returned after applying its write
        assert stored is not None and stored.record_dict() == amsterdam.record_dict()
        await api.put(amsterdam.with_volgindicatie(followed))
        updated = api.get(amsterdam.id)
        assert updated is not None and followed in updated.volgindicaties
        await api.put(amsterdam.retired())
        retired = api.get(amsterdam.id)
        assert retired is not None and retired.status == "retired"
        assert amsterdam.id not in api.index  # a retired subscription matches nothing
        await api.delete(amsterdam.id)
        assert api.get(amsterdam.id) is None


async def test_changes_are_announced(settings: Settings, bus_topics: Topics) -> None:
    async with running(settings, "api") as api:
        seen: list[tuple[str, str | None]] = []
        api.changes.append(lambda id_, sub: seen.append((id_, sub and sub.purpose)))
        await api.put(gemeente("0363"))
        await api.delete("gemeente-0363")
        assert seen == [("gemeente-0363", "basisregistratie"), ("gemeente-0363", None)]


async def test_undecodable_records_are_skipped(
    settings: Settings, bus_topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    producer = make_producer(settings, "vandal")
    await producer.start()
    try:
        for key, value in [
            (b"broken", b"{not json"),
            (b"gemeente-0363", b'{"id": "gemeente-0363"}'),  # not a valid subscription
            (b"\xff\xfe", b"{}"),
            (b"other-id", gemeente("0344").model_dump_json().encode()),  # key is not the id
        ]:
            await (await producer.send(bus_topics.subscriptions, value, key=key))
    finally:
        await producer.stop()

    async with running(settings, "api") as api:
        assert len(api) == 0
        await api.put(gemeente("0363"))  # the reader still follows
        assert api.get("gemeente-0363") is not None
    skipped = [r for r in caplog.records if "undecodable subscription record" in r.getMessage()]
    assert len(skipped) == 4
    assert not any("secret-token" in r.getMessage() or "{" in r.getMessage() for r in skipped)


async def _delete_topic(settings: Settings, topic: str) -> None:
    admin = make_admin(settings.kafka)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


async def _until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while not check():  # noqa: ASYNC110 - polled by design
            await asyncio.sleep(0.05)


async def test_a_reader_whose_topic_is_gone_says_so_then_gives_up(
    settings: Settings, bus_topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings.model_copy(
        update={"health": settings.health.model_copy(update={"give_up_after_s": 3.0})}
    )
    health = Health()
    health.started("worker")
    store = SubscriptionStore(settings, name="doomed", health=health)
    await store.start()
    try:
        await store.ready()
        await _delete_topic(settings, bus_topics.subscriptions)
        gone = f"subscriptions: topic {bus_topics.subscriptions} is gone from the cluster"
        await _until(lambda: gone in health.ready()[1]["worker"])
        await _until(lambda: health.failed is not None)  # not permanent-and-silent
        assert health.failed == gone
        with pytest.raises(KafkaUnavailable):
            await store.sync()
    finally:
        await store.stop()
    # it let go of the topic instead of asking for it in a loop
    spun = [r for r in caplog.records if "not found in cluster metadata" in r.getMessage()]
    assert len(spun) < 500


async def test_a_reader_resumes_when_its_topic_is_back_in_time(
    settings: Settings, bus_topics: Topics
) -> None:
    health = Health()
    health.started("api")
    async with running(settings, "writer") as writer:
        store = SubscriptionStore(settings, name="follower", health=health)
        await store.start()
        try:
            await store.ready()
            await _delete_topic(settings, bus_topics.subscriptions)
            await _until(lambda: health.ready()[0] is False)
            await create_topics(settings.kafka, bus_topics_specs(settings))
            await _until(lambda: health.ready()[0] is True)
            assert health.failed is None
            await writer.put(gemeente("0363"))
            await eventually(store, "gemeente-0363", lambda s: s is not None)
        finally:
            await store.stop()


def bus_topics_specs(settings: Settings) -> list[TopicSpec]:
    return [s for s in specs(settings.kafka, ()) if s.name.endswith(".subscriptions")]


# -- retirements: a 410 recorded by the delivery role in a topic of its own ---------------


async def test_a_retirement_of_the_current_version_retires_it_everywhere_until_edited(
    settings: Settings, bus_topics: Topics
) -> None:
    async with running(settings, "api") as api, running(settings, "delivery") as delivery:
        amsterdam = await api.put(gemeente("0363"))
        await delivery.sync()
        version = delivery.version(amsterdam.id)
        assert version is not None and version == api.version(amsterdam.id)
        await delivery.retire(amsterdam.id, version)
        retired = delivery.get(amsterdam.id)  # read-your-writes
        assert retired is not None and retired.status == "retired"
        assert amsterdam.id not in delivery.index
        seen = await eventually(api, amsterdam.id, lambda s: s is not None and not s.active)
        # the retirement changed the status and nothing else
        assert seen.record_dict() == {**amsterdam.record_dict(), "status": "retired"}

        await api.put(amsterdam)  # an operator's later write, even of the same content, wins
        again = api.get(amsterdam.id)
        assert again is not None and again.active and amsterdam.id in api.index
        await eventually(delivery, amsterdam.id, lambda s: s is not None and s.active)

    async with running(settings, "restarted") as restarted:
        back = restarted.get(amsterdam.id)
        assert back is not None and back.active


async def test_a_retirement_of_an_older_version_retires_nothing(
    settings: Settings, bus_topics: Topics
) -> None:
    async with running(settings, "api") as api, running(settings, "delivery") as delivery:
        amsterdam = await api.put(gemeente("0363"))
        await delivery.sync()
        old = delivery.version(amsterdam.id)
        assert old is not None
        await api.put(gemeente("0363", purpose="changed"))  # after the 410, before the retire
        await delivery.retire(amsterdam.id, old)
        await api.sync()
        for store in (api, delivery):
            current = store.get(amsterdam.id)
            assert current is not None and current.active and current.purpose == "changed"
    async with running(settings, "restarted") as restarted:
        kept = restarted.get(amsterdam.id)
        assert kept is not None and kept.active


async def test_a_retirement_survives_a_restart(settings: Settings, bus_topics: Topics) -> None:
    async with running(settings, "api") as api:
        amsterdam = await api.put(gemeente("0363"))
        await api.put(gemeente("0344"))
        version = api.version(amsterdam.id)
        assert version is not None
        await api.retire(amsterdam.id, version)
    async with running(settings, "restarted") as restarted:
        statuses = {s.id: s.status for s in restarted}
        assert statuses == {"gemeente-0363": "retired", "gemeente-0344": "active"}
        assert [s.id for s in restarted.index] == ["gemeente-0344"]


async def test_malformed_retirement_records_are_logged_and_ignored(
    settings: Settings, bus_topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(settings, "api") as api:
        amsterdam = await api.put(gemeente("0363"))
        version = api.version(amsterdam.id)
        assert version is not None
        good = {"id": amsterdam.id, "version": version, "at": "2026-01-02T03:04:05+00:00"}
        producer = make_producer(settings, "vandal")
        await producer.start()
        try:
            for key, value in [
                (b"gemeente-0363", b"{not json"),
                (b"\xff\xfe", json.dumps(good).encode()),
                # a retirement that would also move the sink and plant a token
                (b"gemeente-0363", json.dumps({**good, "sink": "https://evil.example/",
                 "sinkCredential": {"accessToken": "planted"}}).encode()),
                (b"gemeente-0363", json.dumps({**good, "version": "sha256:xyz"}).encode()),
                (b"gemeente-0344", json.dumps(good).encode()),  # the key is not its id
            ]:  # fmt: skip
                await (await producer.send(bus_topics.retirements, value, key=key))
        finally:
            await producer.stop()
        await api.sync()
        await api.put(gemeente("0599"))  # the reader still follows
        current = api.get(amsterdam.id)
        assert current is not None and current.active
        assert current.record_dict() == amsterdam.record_dict()
        assert api.get("gemeente-0599") is not None
    ignored = [r for r in caplog.records if "malformed retirement record" in r.getMessage()]
    assert len(ignored) == 5
    assert all(r.levelname == "ERROR" for r in ignored)
    text = " ".join(r.getMessage() for r in ignored)
    assert "evil" not in text and "planted" not in text and "{" not in text
    assert "its value is not JSON" in text and "its id is not its key" in text
