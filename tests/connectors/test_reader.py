"""The delivery reader's bookkeeping across a rebalance, against a consumer that refuses
what aiokafka refuses (pausing or seeking a partition that is not assigned)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiokafka import TopicPartition

from connectors.reader import Reader
from streams.config import Settings

T = "t.deliver.a"


class Consumer:
    """What the reader calls, with aiokafka's assertions."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = set(assigned)
        self._paused: set[TopicPartition] = set()
        self.seeks: dict[TopicPartition, int] = {}

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self.assigned)

    def paused(self) -> frozenset[TopicPartition]:
        return frozenset(self._paused & self.assigned)

    def pause(self, *tps: TopicPartition) -> None:
        assert all(tp in self.assigned for tp in tps), "not assigned"  # as aiokafka does
        self._paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        assert all(tp in self.assigned for tp in tps), "not assigned"
        self._paused.difference_update(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        assert tp in self.assigned, "not assigned"
        self.seeks[tp] = offset


class Courier:
    topic = T
    stopping = False
    idle = True

    def restart_offset(self, partition: int) -> int | None:
        return 7


@pytest.fixture
def reader(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> tuple[Reader, Consumer]:
    consumer = Consumer({TopicPartition(T, 0), TopicPartition(T, 1)})
    monkeypatch.setattr("connectors.reader.make_consumer", lambda *a, **k: consumer)
    return Reader(settings), consumer


def test_a_courier_detached_during_a_revocation_leaves_nothing_to_pause_or_seek(
    reader: tuple[Reader, Consumer],
) -> None:
    r, consumer = reader
    courier: Any = Courier()
    r.attach(courier)
    r.detach(courier)  # stopped: its partitions wait, set back to 7
    r._back_pressure()
    assert consumer.paused() == {TopicPartition(T, 0), TopicPartition(T, 1)}
    consumer.assigned = {TopicPartition(T, 1)}  # a rebalance took partition 0 elsewhere
    r._back_pressure()  # before: AssertionError pausing partition 0, every round
    assert consumer.paused() == {TopicPartition(T, 1)}
    r.attach(courier)  # the subscription is back: only what is still ours is sought
    assert consumer.seeks == {TopicPartition(T, 1): 7}
    r._back_pressure()
    assert consumer.paused() == set()  # a courier takes it again (idle: nothing to hold)


class Counted:
    """A courier that counts how often the reader looks at it."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.stopping = False
        self.looks = 0
        self.waiting: set[TopicPartition] = set()

    @property
    def idle(self) -> bool:
        self.looks += 1
        return not self.waiting

    def back_pressure(
        self, assigned: list[TopicPartition]
    ) -> tuple[dict[TopicPartition, int], set[TopicPartition]]:
        return {}, {tp for tp in assigned if tp in self.waiting}


class Watcher(Consumer):
    """The group-less consumer that watches the cool partitions."""

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned, self._paused = set(tps), set()


async def test_a_cool_partition_costs_the_back_pressure_pass_nothing_and_a_freed_one_resumes(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy_tp, idle_tps = TopicPartition("t.deliver.busy", 0), [TopicPartition(T, 0)]
    consumer = Consumer({busy_tp, *idle_tps})
    watcher = Watcher(set())
    made = iter([consumer, watcher])
    monkeypatch.setattr("connectors.reader.make_consumer", lambda *a, **k: next(made))

    async def position(tp: TopicPartition) -> int:
        return 5

    consumer.position = position  # type: ignore[attr-defined]
    r = Reader(settings)
    busy, quiet = Counted(busy_tp.topic), Counted(T)
    r.attach(busy)  # type: ignore[arg-type]
    r.attach(quiet)  # type: ignore[arg-type]
    busy.waiting = {busy_tp}  # its lanes are full
    r._back_pressure()
    assert consumer.paused() == {busy_tp}
    r._hand_out(busy_tp, [])  # (nothing came: the busy one stays read, its courier is not idle)
    await r._sweep(time.monotonic() + 60)  # the quiet partition brought nothing for a minute
    assert consumer.paused() == {busy_tp, *idle_tps}  # not fetched here
    assert watcher.paused() == {busy_tp} and watcher.seeks[idle_tps[0]] == 5  # watched
    looks = quiet.looks
    for _ in range(10):
        r._back_pressure()
    assert quiet.looks == looks  # before: every pass asked every courier
    busy.waiting = set()  # a lane freed
    r._back_pressure()
    assert consumer.paused() == set(idle_tps)  # resumed at once, the cool one still paused
