"""What a courier holds: records kept per lane in offset order, the offset to commit per
partition, and the back-pressure the held records ask for."""

from __future__ import annotations

import json

from aiokafka import TopicPartition

from connectors.holding import LANE_CAP, MAX_PENDING, Held, Holding, held, window_start
from connectors.offsets import SPILL_CAP, Offer, Watermark
from streams.contract.record import read_record

TOPIC = "gemeentebus.deliver.s1"


def _record(partition: int, offset: int, key: bytes | None = b"k") -> Held:
    value = json.dumps({"id": f"e{offset}", "source": "urn:test", "type": "t"}).encode()
    return held(partition, offset, read_record(key, [], value, max_bytes=1 << 20))


def _hold(holding: Holding, record: Held) -> None:
    assert holding.offer(record.partition, record.offset, record.key) is Offer.HOLD
    holding.add(record)


def _offer(holding: Holding, partition: int, offset: int, key: bytes | None) -> Offer:
    """Offer a record as the courier does, holding it when told to."""
    offer = holding.offer(partition, offset, key)
    if offer is Offer.HOLD:
        holding.add(_record(partition, offset, key))
    return offer


def _drain(holding: Holding, lane: tuple[int, bytes | None], to: int) -> None:
    """Deliver the head of `lane` until it holds `to` records."""
    queue = holding.lanes[lane]
    while len(queue) > to:
        holding.watermarks[lane[0]].finish(queue.popleft().offset)


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


def test_a_full_lane_spills_its_key_while_the_other_keys_go_on() -> None:
    holding = Holding("courier s1")
    assigned = {TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)}
    for offset in range(LANE_CAP):
        _hold(holding, _record(0, offset, b"a"))
    assert _offer(holding, 0, LANE_CAP, b"a") is Offer.SPILL
    assert _offer(holding, 0, LANE_CAP + 1, b"b") is Offer.HOLD  # its neighbour goes on
    assert holding.to_pause(assigned) == set()  # no partition waits for one key
    assert holding.pending == LANE_CAP + 1 and holding.spilled == 1
    _drain(holding, (0, b"b"), 0)
    _drain(holding, (0, b"a"), LANE_CAP // 2 + 1)
    assert holding.to_commit(TOPIC) == {TopicPartition(TOPIC, 0): LANE_CAP // 2 - 1}
    _drain(holding, (0, b"a"), 0)  # everything held finished: the spilled one is not
    assert holding.to_commit(TOPIC) == {TopicPartition(TOPIC, 0): LANE_CAP}


def test_a_spilled_key_is_read_again_in_order_once_its_lane_drains_to_half() -> None:
    holding = Holding("courier s1")
    tp = TopicPartition(TOPIC, 0)
    for offset in range(LANE_CAP):
        _hold(holding, _record(0, offset, b"a"))
    first = LANE_CAP
    assert _offer(holding, 0, first, b"a") is Offer.SPILL
    assert _offer(holding, 0, first + 1, b"b") is Offer.HOLD
    assert holding.to_seek({tp}) == {}  # its lane is still full
    _drain(holding, (0, b"a"), LANE_CAP // 2)
    # a later record of the key spills too, though its lane has room: it must not overtake
    assert _offer(holding, 0, first + 2, b"a") is Offer.SPILL
    assert holding.to_seek({tp}) == {tp: first}  # back to the first spilled offset
    assert holding.to_seek({tp}) == {}  # once
    assert _offer(holding, 0, first, b"a") is Offer.HOLD
    assert _offer(holding, 0, first + 1, b"b") is Offer.SKIP  # held before
    assert _offer(holding, 0, first + 2, b"a") is Offer.HOLD
    assert holding.spilled == 0
    assert holding.to_seek({tp}) == {tp: first + 3}  # on past where the re-read began
    assert _offer(holding, 0, first + 3, b"a") is Offer.HOLD
    lane = [r.offset for r in holding.lanes[(0, b"a")]]
    assert lane == sorted(lane) and lane[-3:] == [first, first + 2, first + 3]
    _drain(holding, (0, b"a"), 0)
    _drain(holding, (0, b"b"), 0)
    assert holding.to_commit(TOPIC) == {tp: first + 4}


def test_records_fetched_before_a_seek_took_effect_are_skipped() -> None:
    holding = Holding("courier s1")
    tp = TopicPartition(TOPIC, 0)
    for offset in range(LANE_CAP):
        _hold(holding, _record(0, offset, b"a"))
    assert _offer(holding, 0, LANE_CAP, b"a") is Offer.SPILL
    for offset in range(LANE_CAP + 1, LANE_CAP + 6):
        assert _offer(holding, 0, offset, b"b") is Offer.HOLD
    _drain(holding, (0, b"a"), 0)
    assert holding.to_seek({tp}) == {tp: LANE_CAP}
    assert _offer(holding, 0, LANE_CAP, b"a") is Offer.HOLD  # the last spilled one
    # the rest of that fetch, and a fetch from before the seek forward: all held before
    for offset in range(LANE_CAP + 1, LANE_CAP + 6):
        assert _offer(holding, 0, offset, b"b") is Offer.SKIP
    assert holding.to_seek({tp}) == {tp: LANE_CAP + 6}
    assert _offer(holding, 0, LANE_CAP + 6, b"b") is Offer.HOLD


def test_a_lane_full_again_during_a_reread_spills_its_key_again() -> None:
    holding = Holding("courier s1")
    tp = TopicPartition(TOPIC, 0)
    for offset in range(LANE_CAP):
        _hold(holding, _record(0, offset, b"a"))
    spilled = [LANE_CAP + 2 * n for n in range(LANE_CAP)]  # a, b, a, b, ...
    for offset in spilled:
        assert _offer(holding, 0, offset, b"a") is Offer.SPILL
        assert _offer(holding, 0, offset + 1, b"b") is Offer.HOLD
    _drain(holding, (0, b"a"), LANE_CAP // 2)
    assert holding.to_seek({tp}) == {tp: spilled[0]}
    offers = [_offer(holding, 0, offset, b"a") for offset in spilled]
    room = LANE_CAP - LANE_CAP // 2
    assert offers == [Offer.HOLD] * room + [Offer.SPILL] * (LANE_CAP - room)
    assert holding.spilled == LANE_CAP - room
    assert holding.to_seek({tp}) == {tp: spilled[-1] + 2}  # re-read done: on
    assert _offer(holding, 0, spilled[-1] + 2, b"a") is Offer.SPILL  # its key still spills
    assert holding.to_commit(TOPIC) == {tp: LANE_CAP // 2}
    _drain(holding, (0, b"a"), 0)
    _drain(holding, (0, b"b"), 0)
    assert holding.to_commit(TOPIC) == {tp: spilled[room]}  # the first spilled again


def test_too_many_spilled_records_pause_their_partition_until_read_again() -> None:
    holding = Holding("courier s1")
    tp, other = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    for offset in range(LANE_CAP):
        _hold(holding, _record(0, offset, b"a"))
    for offset in range(LANE_CAP, LANE_CAP + SPILL_CAP):
        assert holding.offer(0, offset, b"a") is Offer.SPILL
    assert holding.to_pause({tp, other}) == {tp}
    _drain(holding, (0, b"a"), LANE_CAP // 2)
    assert holding.to_seek({tp, other}) == {tp: LANE_CAP}
    assert holding.to_pause({tp, other}) == set()  # reading them again


def test_spilled_records_gone_to_retention_are_not_waited_for() -> None:
    holding = Holding("courier s1")
    tp = TopicPartition(TOPIC, 0)
    for offset in range(LANE_CAP):
        _hold(holding, _record(0, offset, b"a"))
    for offset in range(LANE_CAP, LANE_CAP + 10):
        assert holding.offer(0, offset, b"a") is Offer.SPILL
    _drain(holding, (0, b"a"), 0)
    assert holding.to_seek({tp}) == {tp: LANE_CAP}
    # the topic's retention deleted the first 4 meanwhile: Kafka starts at the fifth
    assert _offer(holding, 0, LANE_CAP + 4, b"a") is Offer.HOLD
    assert holding.spilled == 5
    assert holding.to_commit(TOPIC) == {tp: LANE_CAP + 4}


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
    assert holding.offer(0, LANE_CAP, b"k") is Offer.SPILL
    _hold(holding, _record(1, 0))
    holding.committed(holding.to_commit(TOPIC))
    holding.drop({0})
    assert set(holding.lanes) == {(1, b"k")}
    assert set(holding.watermarks) == {1}
    assert holding.pending == 1 and holding.spilled == 0
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
