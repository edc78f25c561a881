"""The delivery reader's bookkeeping across a rebalance, against a consumer that refuses
what aiokafka refuses (pausing or seeking a partition that is not assigned)."""

from __future__ import annotations

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
