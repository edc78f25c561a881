"""The one retry decision: aiokafka's flags, corrected where a producer is spoiled."""

from __future__ import annotations

import random

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    OutOfOrderSequenceNumber,
    TopicAuthorizationFailedError,
)

from streams.exceptions import DeliveryFailed, InvalidEvent, KafkaUnavailable
from streams.retry import RetryPolicy, retriable, spoils_producer


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (KafkaConnectionError(), True),
        (NotEnoughReplicasError(), True),
        (KafkaUnavailable("down"), True),
        (DeliveryFailed("503", retriable=True), True),
        (DeliveryFailed("400", retriable=False), False),
        (MessageSizeTooLargeError(), False),
        (TopicAuthorizationFailedError(), False),
        (InvalidEvent([]), False),
        (ValueError("a bug"), False),
        # aiokafka calls these permanent; for the record they are not: a new producer sends it
        (KafkaTimeoutError(), True),
        (OutOfOrderSequenceNumber(), True),
    ],
)
def test_retriable_reads_the_flag_with_corrections(error: BaseException, expected: bool) -> None:
    assert retriable(error) is expected


def test_only_producer_state_errors_spoil_the_producer() -> None:
    assert spoils_producer(OutOfOrderSequenceNumber())
    assert spoils_producer(KafkaTimeoutError())
    assert not spoils_producer(KafkaConnectionError())
    assert not spoils_producer(MessageSizeTooLargeError())


def test_delay_is_full_jitter_under_a_capped_exponential() -> None:
    policy = RetryPolicy(initial_s=1.0, max_s=8.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # jitter spreads over the whole range


def test_a_bounded_policy_gives_up_on_retriable_errors_in_time() -> None:
    policy = RetryPolicy(give_up_after_s=30.0)
    assert policy.retries(KafkaConnectionError(), elapsed_s=29.0)
    assert not policy.retries(KafkaConnectionError(), elapsed_s=30.0)
    assert not policy.retries(MessageSizeTooLargeError(), elapsed_s=0.0)
    assert RetryPolicy().retries(KafkaConnectionError(), elapsed_s=1e9)
