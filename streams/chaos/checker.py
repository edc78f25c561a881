"""The chaos suite's bookkeeping: what was published and accepted, what arrived, and the verdict.

Pure: no Kafka, no HTTP. A `Ledger` notes every event a publisher offered (with its order
key, which never leaves this process) and every one the bus accepted (a 202, or an acked
Kafka send), numbered in the order the acceptances came. A subscriber's `Arrival`s are the
deliveries it answered 2xx, in the order they arrived. `tally` compares the two:

- expected: accepted events the subscriber's subscription matches;
- delivered: expected events that arrived at least once; lost: expected, never arrived;
- duplicated: arrivals beyond the first of an event;
- reordered: per order key, first arrivals judged in arrival order, each one accepted before
  an event of its key that already arrived counts once (a later event overtook it);
- recover_s: from the moment the faults healed to the first arrival of the last expected
  event (None while anything is lost).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Arrival", "Ledger", "Sent", "Tally", "latencies", "tally"]


@dataclass(frozen=True, slots=True)
class Sent:
    """One event a publisher offered: its identity, type and order key (kept in memory only)."""

    id: str
    source: str
    type: str
    key: str
    channel: str  # "http" or "kafka"


@dataclass(frozen=True, slots=True)
class Arrival:
    """One delivery a subscriber answered 2xx: which event, and when (time.time())."""

    id: str
    at: float


@dataclass
class Ledger:
    """Every event offered, and the acceptance order of those the bus accepted."""

    sent: dict[str, Sent] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)  # id -> acceptance number
    accepted_at: dict[str, float] = field(default_factory=dict)
    offered_at: dict[str, float] = field(default_factory=dict)

    def offer(self, sent: Sent) -> None:
        """Note an event as published (before the bus answered)."""
        self.sent.setdefault(sent.id, sent)
        self.offered_at.setdefault(sent.id, time.time())

    def accept(self, event_id: str, at: float | None = None) -> None:
        """Note that the bus accepted an event; only the first acceptance counts."""
        if event_id in self.sent and event_id not in self.accepted:
            self.accepted[event_id] = len(self.accepted)
            self.accepted_at[event_id] = time.time() if at is None else at

    def matching(self, wants: Callable[[Sent], bool]) -> list[Sent]:
        """The offered events `wants` selects, in the order they were offered."""
        return [s for s in self.sent.values() if wants(s)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Tally:
    """One subscriber's counts in one scenario."""

    subscriber: str
    published: int
    accepted: int
    delivered: int
    lost: int
    duplicated: int
    reordered: int
    unexpected: int  # arrivals of events it should not have received (or never offered)
    recover_s: float | None
    lost_ids: tuple[str, ...] = ()  # the first few, to look them up in the topics

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.reordered == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "subscriber": self.subscriber,
            "published": self.published,
            "accepted": self.accepted,
            "delivered": self.delivered,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "unexpected": self.unexpected,
            "recover_s": self.recover_s,
            "lost_ids": list(self.lost_ids),
            "ok": self.ok,
        }


def reorders(order: Iterable[int | None], keys: Iterable[str]) -> int:
    """How many first arrivals came after a later-accepted event of the same key.

    `order` gives each arrival's acceptance number (None: not accepted, not judged), `keys`
    its order key, both in arrival order.
    """
    latest: dict[str, int] = {}
    count = 0
    for number, key in zip(order, keys, strict=True):
        if number is None:
            continue
        seen = latest.get(key)
        if seen is not None and number < seen:
            count += 1
        else:
            latest[key] = number
    return count


def tally(
    subscriber: str,
    ledger: Ledger,
    arrivals: Sequence[Arrival],
    wants: Callable[[Sent], bool] = lambda _: True,
    *,
    healed_at: float | None = None,
) -> Tally:
    """Compare what `subscriber` received with what it should have (see the module doc)."""
    offered = ledger.matching(wants)
    expected = {s.id for s in offered if s.id in ledger.accepted}
    first: dict[str, float] = {}
    duplicated = unexpected = 0
    firsts: list[str] = []
    for arrival in arrivals:
        if arrival.id in first:
            duplicated += 1
            continue
        first[arrival.id] = arrival.at
        sent = ledger.sent.get(arrival.id)
        if sent is None or not wants(sent):
            unexpected += 1
            continue
        firsts.append(arrival.id)
    lost = [s.id for s in offered if s.id in expected and s.id not in first]
    reordered = reorders(
        (ledger.accepted.get(i) for i in firsts), (ledger.sent[i].key for i in firsts)
    )
    recover: float | None = None
    if not lost and healed_at is not None:
        last = max((first[i] for i in expected), default=healed_at)
        recover = round(max(0.0, last - healed_at), 2)
    return Tally(
        subscriber=subscriber,
        published=len(offered),
        accepted=len(expected),
        delivered=len(expected) - len(lost),
        lost=len(lost),
        duplicated=duplicated,
        reordered=reordered,
        unexpected=unexpected,
        recover_s=recover,
        lost_ids=tuple(lost[:5]),
    )


def latencies(ledger: Ledger, arrivals: Sequence[Arrival], since: float = 0.0) -> list[float]:
    """Seconds from acceptance to first arrival, for events accepted at or after `since`."""
    seen: set[str] = set()
    out = []
    for arrival in arrivals:
        if arrival.id in seen:
            continue
        seen.add(arrival.id)
        accepted = ledger.accepted_at.get(arrival.id)
        if accepted is not None and accepted >= since:
            out.append(max(0.0, arrival.at - accepted))
    return out
