"""The retry policy: is a failure worth trying again, how long to wait, and when to give up.

Modelled on aiokafka's `sender._can_retry`: one lookup of the error's `retriable` flag
(ours, see `streams.exceptions`, or aiokafka's), with the few corrections below, and a
bound in time after which a retriable failure is given up on too. Every retry loop of the
bus asks a `RetryPolicy`; none decides on its own. The policies of the bus's own Kafka
loops are named here (`PRODUCE`, `WRITES`, `RETIRE`, `LANE_BUG`, `CLUSTER_WAIT`,
`REPLAY_READ`, `KAFKA_READ`); the subscription store's bound comes from `health`; the
webhook retries are configured (`RetryPolicy.from_settings(settings.delivery)`).

Corrections to aiokafka's flags, each for a reason seen on a real broker:
- `KafkaTimeoutError` (`send` found the producer's buffer full for the request timeout:
  the broker is away) is temporary, and counted as spoiling the producer.
- An idempotent producer's batch that expired (its partition had no leader for longer than
  the request timeout; the future fails with `LeaderNotAvailableError`) used up its
  sequence numbers: once the leader is back that producer fails for good with
  `OutOfOrderSequenceNumber`, and must be replaced before the retry (`spoils_producer`;
  `streams.kafka.clients.Producer` does).
- `OutOfOrderSequenceNumber`, `UnknownProducerId`, `InvalidProducerEpoch`, `ProducerFenced`
  and `IllegalStateError` are permanent for the producer, not for the record: a new
  producer (a new producer id) sends the same record fine.

A subscriber's HTTP answer is classified by one table (`http_answer`): 2xx delivered, 410
gone (never retried: the subscription is retired), anything else retried, and only 429
and 503 name a `Retry-After` the bus honours.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

from aiokafka.errors import (
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
    UnknownProducerId,
    UnknownTopicOrPartitionError,
)

from streams.config import DeliverySettings
from streams.exceptions import DeliveryFailed

__all__ = [
    "CLUSTER_WAIT",
    "KAFKA_READ",
    "LANE_BUG",
    "PRODUCE",
    "REPLAY_READ",
    "RETIRE",
    "WRITES",
    "HttpAnswer",
    "RetryPolicy",
    "http_answer",
    "missing_for_good",
    "refused_for_size",
    "spoils_producer",
]

_SPOILING = (
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
    IllegalStateError,
)

# Errors a broker or client gives one record for what it is, not for the moment: sending the
# same record again fails the same way, whatever the producer or the broker's health.
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)


def spoils_producer(exc: BaseException) -> bool:
    """Whether the producer that raised `exc` can no longer send (replace it, then retry)."""
    return isinstance(exc, _SPOILING)


def missing_for_good(exc: BaseException, topic: str, missing_before: str | None) -> bool:
    """Whether an unknown topic is gone for good: aiokafka flags `UnknownTopicOrPartition`
    retriable (metadata lags just after a topic is created), so it is temporary the first
    time and permanent when the same `topic` is still unknown on the next attempt, after a
    second metadata wait (`missing_before`: the topic unknown on the attempt before)."""
    return isinstance(exc, UnknownTopicOrPartitionError) and topic == missing_before


def refused_for_size(exc: BaseException) -> bool:
    """Whether `exc` refused a record for its size (the record's fault: never retry it)."""
    return isinstance(exc, _TOO_LARGE)


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """How the bus takes one HTTP status of a subscriber."""

    delivered: bool = False
    gone: bool = False  # 410: the subscriber wants nothing more
    retriable: bool = True
    honours_retry_after: bool = False  # the wait its `Retry-After` names is kept to


_DELIVERED: Final = HttpAnswer(delivered=True, retriable=False)
_GONE: Final = HttpAnswer(gone=True, retriable=False)
_THROTTLED: Final = HttpAnswer(honours_retry_after=True)
_FAILED: Final = HttpAnswer()


def http_answer(status: int) -> HttpAnswer:
    """The classification of a subscriber's HTTP `status` (a 3xx is a failure: redirects are
    not followed; a 4xx other than 410 is retried like a 5xx)."""
    if 200 <= status < 300:
        return _DELIVERED
    if status == 410:
        return _GONE
    if status in (429, 503):
        return _THROTTLED
    return _FAILED


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, given up after `give_up_after_s`.

    `give_up_after_s=None` never gives up on a retriable error: only for loops whose every
    retry is visible (logged, and the role not ready) and whose input stays unacknowledged.
    """

    initial_s: float = 0.5
    max_s: float = 5.0
    give_up_after_s: float | None = None
    jitter: bool = True  # False: wait the capped exponential itself (a steady pace)

    @classmethod
    def from_settings(cls, settings: DeliverySettings) -> RetryPolicy:
        """The webhook retries: backoff as configured, given up after the retry window."""
        return cls(
            initial_s=settings.initial_backoff_s,
            max_s=settings.max_backoff_s,
            give_up_after_s=settings.retry_window_s,
        )

    @staticmethod
    def retriable(exc: BaseException) -> bool:
        """Whether trying the same thing again (on a fresh producer, if spoiled) can succeed.

        A `TimeoutError` (a call to the broker cut off by `asyncio.timeout`) is temporary."""
        if spoils_producer(exc) or isinstance(exc, TimeoutError):
            return True
        return bool(getattr(exc, "retriable", False))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt `attempt` (1-based): full jitter over a capped
        exponential (without `jitter`, the capped exponential)."""
        ceiling = min(self.max_s, self.initial_s * 2 ** max(0, attempt - 1))
        return (rng or random).uniform(0, ceiling) if self.jitter else ceiling

    def retries(self, exc: BaseException, *, elapsed_s: float) -> bool:
        """Whether to try again after `exc`, `elapsed_s` after the first attempt."""
        if not self.retriable(exc):
            return False
        return self.give_up_after_s is None or elapsed_s < self.give_up_after_s

    def wait(
        self,
        exc: BaseException,
        *,
        attempt: int,
        elapsed_s: float,
        rng: random.Random | None = None,
    ) -> float | None:
        """The wait before the attempt after failed attempt `attempt` (1-based, `elapsed_s`
        after the first), or None to give up.

        A `retry_after` the failure names (`DeliveryFailed`) is waited exactly, or given up on
        when it ends past `give_up_after_s`; otherwise the backoff, cut so that the last
        attempt falls at the bound.
        """
        if not self.retries(exc, elapsed_s=elapsed_s):
            return None
        left = math.inf if self.give_up_after_s is None else self.give_up_after_s - elapsed_s
        asked = exc.retry_after if isinstance(exc, DeliveryFailed) else None
        if asked is not None:
            return asked if asked <= left else None
        return min(self.delay(attempt, rng), left)


# The bus's own Kafka loops: fixed paces, never given up on (their input stays unfinished,
# each failure is logged and health says broken), unless the error is permanent.
PRODUCE: Final = RetryPolicy(initial_s=0.5, max_s=5.0)  # the worker's batch produce
WRITES: Final = RetryPolicy(initial_s=0.2, max_s=5.0)  # a courier's DLQ and delivery-log writes
RETIRE: Final = RetryPolicy(initial_s=0.5, max_s=30.0)  # retiring a subscription after a 410
LANE_BUG: Final = RetryPolicy(initial_s=0.5, max_s=30.0)  # a courier lane after a bug of ours
CLUSTER_WAIT: Final = RetryPolicy(initial_s=0.5, max_s=3.0)  # `run` waiting for the cluster
REPLAY_READ: Final = RetryPolicy(initial_s=0.2, max_s=5.0)  # the replay log's reader
# A courier's fetch and commit, and starting a courier: every Kafka error is retried at a
# steady second, logged each time; the loop is the courier's life and its input stays
# uncommitted, so nothing is lost while it lasts.
KAFKA_READ: Final = RetryPolicy(initial_s=1.0, max_s=1.0, jitter=False)
