"""A consumer that holds thousands of paused partitions without walking them on every wake.

aiokafka's fetcher (0.14, `Fetcher._get_actions_per_node`) walks every assigned partition
each time it wakes (after every fetch response and every `getmany` that took records) and
waits on one resume future per paused partition. The delivery reader holds ~2,000 paused
(cool) partitions beside a few busy ones: that walk was ~75% of its busy event loop at
100 records/s (py-spy), and building the list of the others anew on each wake still
~0.4 ms of every record's way.

`install(consumer)` (after `start()`) shows the fetcher only what it may act on: the
partitions not paused, the paused ones with no position yet (the fetcher looks a position
up even for a paused partition, and `position()` waits for that lookup), and the paused
ones it still holds fetched records of. That list is kept, not rebuilt per wake: it is
built again only when the assignment changes, a partition is paused or resumed, a
position is reset (`seek_to_*`), or one shown for want of a position has one now. Those are
all the ways a partition can move into or out of the list: a paused partition that has a
position loses it only through a reset (a fetch error's reset hits a partition that was
being fetched, hence shown). A resume also wakes the fetcher, which would otherwise look
at the resumed partition only at its next wake.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["install"]


class _Shown:
    """An assignment as the fetcher is shown it (the two things its walk reads)."""

    __slots__ = ("state_value", "tps")

    def __init__(self, state_value: Callable[[TopicPartition], Any], tps: list[TopicPartition]):
        self.state_value = state_value
        self.tps = tps


class _Fetchable:
    """The partitions of the current assignment the fetcher is to walk, kept up to date."""

    def __init__(self, fetcher: Any) -> None:
        self._fetcher = fetcher
        self.stale = True  # set by a pause, a resume or a reset
        self._assignment: Any = None
        self._tps: list[TopicPartition] = []
        self._set: frozenset[TopicPartition] = frozenset()
        self._unplaced: list[Any] = []  # states shown for having no position (yet)

    def shown(self, assignment: Any) -> _Shown:
        if (
            self.stale
            or assignment is not self._assignment
            or any(state.has_valid_position for state in self._unplaced)
        ):
            self._build(assignment)
        tps = self._tps
        buffered = self._fetcher._records  # (few: the partitions of a fetch or two)
        extra = [tp for tp in buffered if tp not in self._set and tp in assignment.tps]
        return _Shown(assignment.state_value, tps + extra if extra else tps)

    def _build(self, assignment: Any) -> None:
        self.stale = False
        self._assignment = assignment
        tps, unplaced = [], []
        for tp, state in assignment._tp_state.items():
            if not state.has_valid_position:
                unplaced.append(state)
                tps.append(tp)
            elif not state.paused:
                tps.append(tp)
        self._tps, self._set, self._unplaced = tps, frozenset(tps), unplaced


def install(consumer: AIOKafkaConsumer) -> None:
    """Have `consumer`'s fetcher walk only the partitions it may act on (after `start()`)."""
    fetcher: Any = consumer._fetcher
    subscription: Any = consumer._subscription
    if fetcher is None:
        raise RuntimeError("install() needs a started consumer: its fetcher is made by start()")
    fetchable = _Fetchable(fetcher)
    walk = fetcher._get_actions_per_node
    pause, resume, reset = subscription.pause, subscription.resume, fetcher.request_offset_reset

    def actions(assignment: Any) -> Any:
        return walk(fetchable.shown(assignment))

    def paused(tp: TopicPartition) -> None:
        pause(tp)
        fetchable.stale = True

    def resumed(tp: TopicPartition) -> None:
        resume(tp)
        fetchable.stale = True
        fetcher._notify(fetcher._wait_consume_future)  # look at it now, not at the next wake

    def reset_(tps: Any, strategy: Any) -> Any:
        fetchable.stale = True
        return reset(tps, strategy)

    fetcher._get_actions_per_node = actions
    subscription.pause, subscription.resume = paused, resumed
    fetcher.request_offset_reset = reset_
