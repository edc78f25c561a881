"""The retry decision: is an error worth trying again, and how long to wait before it.

Modelled on aiokafka's `sender._can_retry`: one lookup of the error's `retriable` flag
(ours, see `streams.exceptions`, or aiokafka's), with the few corrections below, and a
bound in time after which a retriable failure is given up on too. Every retry loop of the
bus asks a `RetryPolicy`; none decides on its own.

Corrections to aiokafka's flags, each for a reason seen on a real broker:
- `KafkaTimeoutError` (a batch expired while the broker was away) is temporary, but the
  expired batch used up its sequence numbers: the producer that sent it is *spoiled* and
  must be replaced before the retry (`spoils_producer`), or it fails for good with
  `OutOfOrderSequenceNumber`.
- `OutOfOrderSequenceNumber`, `UnknownProducerId`, `InvalidProducerEpoch`, `ProducerFenced`
  and `IllegalStateError` are permanent for the producer, not for the record: a new
  producer (a new producer id) sends the same record fine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from aiokafka.errors import (
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

__all__ = ["RetryPolicy", "retriable", "spoils_producer"]

_SPOILING = (
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
    IllegalStateError,
)


def spoils_producer(exc: BaseException) -> bool:
    """Whether the producer that raised `exc` can no longer send (replace it, then retry)."""
    return isinstance(exc, _SPOILING)


def retriable(exc: BaseException) -> bool:
    """Whether trying the same thing again (on a fresh producer, if spoiled) can succeed."""
    if spoils_producer(exc):
        return True
    return bool(getattr(exc, "retriable", False))


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, given up after `give_up_after_s`.

    `give_up_after_s=None` never gives up on a retriable error: only for loops whose every
    retry is visible (logged, and the role not ready) and whose input stays unacknowledged.
    """

    initial_s: float = 0.5
    max_s: float = 5.0
    give_up_after_s: float | None = None

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt `attempt` (1-based)."""
        ceiling = min(self.max_s, self.initial_s * 2 ** max(0, attempt - 1))
        return (rng or random).uniform(0, ceiling)

    def retries(self, exc: BaseException, *, elapsed_s: float) -> bool:
        """Whether to try again after `exc`, `elapsed_s` after the first attempt."""
        if not retriable(exc):
            return False
        return self.give_up_after_s is None or elapsed_s < self.give_up_after_s
