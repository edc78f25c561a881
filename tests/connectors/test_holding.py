"""What a courier holds: records kept per lane in offset order, the offset to commit per
partition, and the back-pressure the held records ask for."""

from __future__ import annotations

import json

from aiokafka import TopicPartition

from connectors.holding import LANE_CAP, MAX_PENDING, Held, Holding, Watermark, held, window_start
from streams.contract.record import read_record

TOPIC = "gemeentebus.deliver.s1"


def _record(partition: int, offset: int, key: bytes | None = b"k") -> Held:
    value = json.dumps({"id": f"e{offset}", "source": "urn:test", "type": "t"}).encode()
    return held(partition, offset, read_record(key, [], value, max_bytes=1 << 20))


def _hold(holding: Holding, record: Held) -> None:
    holding.read(record.partition, record.offset)
    holding.add(record)


def test_a_sendable_record_is_held_without_a_problem_and_an_odd_one_with_its_reason() -> None:
    good = _record(0, 1)
    assert good.problem is None
    assert good.ref.id == "e1"
    odd = held(0, 2, read_record(b"k", [], b"\xff not json", max_bytes=1 << 20))
    assert odd.problem is not None
    assert odd.problem.code == "not_utf8"


def test_the_watermark_commits_below_the_first_unfinished_offset() -> None:
    mark = Watermark()
    assert mark.committable is None
    for offset in (5, 6, 7):
        mark.read(offset)
    mark.finish(6)
    assert mark.committable == 5
    mark.finish(5)
    assert mark.committable == 7
    mark.finish(7)
    assert mark.committable == 8  # one past the last read


def test_lanes_keep_offset_order_per_partition_and_key() -> None:
    holding = Holding("courier s1")
    for offset, key in [(0, b"a"), (1, b"b"), (2, b"a"), (3, None)]:
        _hold(holding, _record(0, offset, key))
    _hold(holding, _record(1, 0, b"a"))
    assert [r.offset for r in holding.lanes[(0, b"a")]] == [0, 2]
    assert [r.offset for r in holding.lanes[(0, None)]] == [3]
    assert [r.offset for r in holding.lanes[(1, b"a")]] == [0]
    assert holding.pending == 5


def test_offsets_to_commit_move_only_when_the_first_unfinished_one_moves() -> None:
    holding = Holding("courier s1")
    for offset in range(3):
        _hold(holding, _record(0, offset))
    assert holding.to_commit(TOPIC) == {TopicPartition(TOPIC, 0): 0}
    holding.committed(holding.to_commit(TOPIC))
    assert holding.to_commit(TOPIC) == {}
    holding.watermarks[0].finish(1)
    assert holding.to_commit(TOPIC) == {}  # offset 0 is not finished: 1 waits
    holding.watermarks[0].finish(0)
    assert holding.to_commit(TOPIC) == {TopicPartition(TOPIC, 0): 2}


def test_a_lane_at_its_cap_pauses_only_its_partition_until_it_drains_to_half() -> None:
    holding = Holding("courier s1")
    assigned = {TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)}
    for offset in range(LANE_CAP):
        _hold(holding, _record(0, offset))
    _hold(holding, _record(1, 0))
    assert holding.to_pause(assigned) == {TopicPartition(TOPIC, 0)}
    lane = holding.lanes[(0, b"k")]
    while len(lane) > LANE_CAP // 2:
        holding.watermarks[0].finish(lane.popleft().offset)
    assert holding.to_pause(assigned) == {TopicPartition(TOPIC, 0)}  # not below half yet
    holding.watermarks[0].finish(lane.popleft().offset)
    assert holding.to_pause(assigned) == set()


def test_too_many_held_records_pause_every_partition_until_half_have_finished() -> None:
    holding = Holding("courier s1")
    assigned = {TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)}
    for offset in range(MAX_PENDING):  # each its own key: no lane reaches its cap
        _hold(holding, _record(offset % 2, offset, str(offset).encode()))
    assert holding.to_pause(assigned) == assigned
    for offset in range(MAX_PENDING // 2):
        holding.watermarks[offset % 2].finish(offset)
    assert holding.to_pause(assigned) == assigned  # exactly half held: still paused
    holding.watermarks[MAX_PENDING // 2 % 2].finish(MAX_PENDING // 2)
    assert holding.to_pause(assigned) == set()


def test_revoked_partitions_are_forgotten() -> None:
    holding = Holding("courier s1")
    for offset in range(LANE_CAP):
        _hold(holding, _record(0, offset))
    _hold(holding, _record(1, 0))
    holding.committed(holding.to_commit(TOPIC))
    holding.drop({0})
    assert set(holding.lanes) == {(1, b"k")}
    assert set(holding.watermarks) == {1}
    assert holding.pending == 1
    assert holding.to_pause({TopicPartition(TOPIC, 1)}) == set()
    _hold(holding, _record(0, 7))  # assigned again: committed anew
    assert holding.to_commit(TOPIC) == {TopicPartition(TOPIC, 0): 7}


def test_the_window_starts_when_the_record_came_in_not_before_the_courier_started() -> None:
    wall, now = 1_000_000.0, 500.0
    came_in = int((wall - 40) * 1000)  # 40 s ago
    # the courier runs for an hour: the 40 s the record waited unread count
    assert window_start(came_in, started=now - 3600, now=now, wall_now=wall) == now - 40
    # the courier started 10 s ago: only those 10 s count
    assert window_start(came_in, started=now - 10, now=now, wall_now=wall) == now - 10
    # a timestamp in the future, or none: the window starts now
    assert window_start(int((wall + 5) * 1000), started=0.0, now=now, wall_now=wall) == now
    assert window_start(None, started=0.0, now=now, wall_now=wall) == now
    assert window_start(-1, started=0.0, now=now, wall_now=wall) == now
