"""The offsets of one deliver-topic partition as a courier reads it: what to commit, what to
leave in Kafka for now, and what to read again.

A `Watermark` keeps only the *unfinished* offsets of a partition: the first of them is the
offset to commit, and what finished above it takes no memory at all.

Spilling: a lane (one key) holds at most `connectors.holding.LANE_CAP` records in memory.
A record of a full lane is not held but *spilled*: only its offset is kept, the commit stays
below it, and the records of other keys after it are read and delivered as usual. From then
on every later record of that key spills too (it must not overtake the spilled one). Once
the partition's lanes have drained to half their cap, the courier seeks back to the first
spilled offset and reads again (`rereading`): a spilled offset is offered once more, in
order, and everything else below the point where the re-read began was held before and is
skipped. A record whose lane is full again is spilled again. When the last spilled offset
has been seen, the courier seeks forward to where the re-read began. So one key that keeps
failing holds back only itself: the other keys of its partition go on, and memory stays
bounded (`LANE_CAP` records per lane, at most `SPILL_CAP` spilled offsets per partition:
past that the partition pauses until a re-read takes some back).

Nothing is lost by spilling: a spilled offset is unfinished for the commit, so a crash or a
rebalance reads it again from Kafka. Only a retention shorter than the wait loses one: a
spilled offset Kafka no longer has when it is read again is counted in `vanished` (the
courier logs it as an error; the bus checks retention against the retry window at start).
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Final

__all__ = ["SPILL_CAP", "Offer", "Watermark"]

SPILL_CAP: Final = 10_000  # spilled offsets one partition keeps before it pauses


class Offer(enum.Enum):
    """What a courier does with a record just fetched (`Watermark.offer`)."""

    HOLD = "hold"  # hold it in its lane: now unfinished
    SPILL = "spill"  # its lane is full (or its key has spilled before): read it again later
    SKIP = "skip"  # held or finished before (a re-read passing it, or a stale fetch)


@dataclass(slots=True)
class Watermark:
    """The unfinished and spilled offsets of one partition; below the first, all done."""

    next_offset: int | None = None  # one past the last offset read for the first time
    unfinished: OrderedDict[int, None] = field(default_factory=OrderedDict)  # in read order
    again: OrderedDict[int, None] = field(default_factory=OrderedDict)  # held by a re-read
    spilled: deque[int] = field(default_factory=deque)  # ascending
    spilled_keys: set[bytes | None] = field(default_factory=set)
    until: int | None = None  # re-reading the spilled offsets below this while set
    _respilled: deque[int] = field(default_factory=deque)  # spilled again by this re-read
    _respilled_keys: set[bytes | None] = field(default_factory=set)
    _seek: int | None = None  # where the courier is to seek next
    vanished: int = 0  # spilled offsets Kafka no longer had when read again (retention)

    def read(self, offset: int) -> None:
        """Note `offset` as read for the first time and unfinished."""
        self.unfinished[offset] = None
        self.next_offset = offset + 1

    def finish(self, offset: int) -> None:
        self.unfinished.pop(offset, None)
        self.again.pop(offset, None)

    @property
    def pending(self) -> int:
        """Offsets held in memory and not finished."""
        return len(self.unfinished) + len(self.again)

    @property
    def spilled_count(self) -> int:
        return len(self.spilled) + len(self._respilled)

    @property
    def committable(self) -> int | None:
        """The next offset to commit: the lowest unfinished or spilled one, else one past the
        last read."""
        firsts = [
            next(iter(self.unfinished), None),
            next(iter(self.again), None),
            self.spilled[0] if self.spilled else None,
            self._respilled[0] if self._respilled else None,
        ]
        lowest = [offset for offset in firsts if offset is not None]
        return min(lowest) if lowest else self.next_offset

    def offer(self, offset: int, key: bytes | None, lane_full: bool) -> Offer:
        """Decide on the record at `offset` of lane `key` just fetched (`lane_full`: its lane
        holds its cap), and note it: held records become unfinished, spilled ones spilled."""
        if self.until is not None:
            if offset < self.until:
                return self._reread(offset, key, lane_full)
            self._end_reread()  # read past it: every spilled offset was seen
        if self.next_offset is not None and offset < self.next_offset:
            return Offer.SKIP  # fetched before a seek took effect
        if lane_full or key in self.spilled_keys:
            self.spilled.append(offset)
            self.spilled_keys.add(key)
            self.next_offset = offset + 1
            return Offer.SPILL
        self.read(offset)
        return Offer.HOLD

    def _reread(self, offset: int, key: bytes | None, lane_full: bool) -> Offer:
        while self.spilled and self.spilled[0] < offset:  # deleted by retention meanwhile
            self.spilled.popleft()
            self.vanished += 1
        if not self.spilled or offset != self.spilled[0]:
            return Offer.SKIP  # held and maybe finished before the spill: not again
        self.spilled.popleft()
        if lane_full or key in self._respilled_keys:
            self._respilled.append(offset)
            self._respilled_keys.add(key)
            result = Offer.SPILL
        else:
            self.again[offset] = None
            result = Offer.HOLD
        if not self.spilled:
            self._seek = self.until  # nothing more to read again below it: jump there
            self._end_reread()
        return result

    def _end_reread(self) -> None:
        self.vanished += len(self.spilled)  # not seen again below `until`: no longer in Kafka
        self.spilled, self.spilled_keys = self._respilled, self._respilled_keys
        self._respilled, self._respilled_keys = deque(), set()
        self.until = None

    def reread(self) -> int | None:
        """Begin reading the spilled offsets again: the offset to seek to (None when there
        is nothing spilled or a re-read is under way)."""
        if not self.spilled or self.until is not None:
            return None
        self.until = self.next_offset
        self._respilled_keys = set()
        return self.spilled[0]

    @property
    def seek_wanted(self) -> bool:
        """A seek is waiting for `take_seek`."""
        return self._seek is not None

    def take_seek(self) -> int | None:
        """Where the courier is to seek after a re-read ended early (once)."""
        seek, self._seek = self._seek, None
        return seek
