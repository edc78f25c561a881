"""The one retry decision: aiokafka's flags, corrected where a producer is spoiled; the wait
before the next attempt; when to give up; the HTTP status table."""

from __future__ import annotations

import random

import pytest
from aiokafka.errors import (
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownProducerId,
    UnknownTopicOrPartitionError,
)

from streams.config import DeliverySettings
from streams.exceptions import (
    ConfigurationError,
    DeliveryFailed,
    FieldError,
    GemeentebusError,
    InvalidEvent,
    KafkaUnavailable,
    RoutingFailed,
    UndecodableEvent,
    UnknownSchema,
    WorkerFailed,
)
from streams.retry import (
    KAFKA_READ,
    LANE_BUG,
    PRODUCE,
    RETIRE,
    WRITES,
    RetryPolicy,
    http_answer,
    missing_for_good,
    refused_for_size,
    spoils_producer,
)

_BROKEN = [FieldError("data", "required", "missing")]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # aiokafka's own flag: the broker away or a leader moving is temporary ...
        (KafkaConnectionError(), True),
        (NotEnoughReplicasError(), True),
        (LeaderNotAvailableError(), True),
        (NotLeaderForPartitionError(), True),
        (RequestTimedOutError(), True),
        (UnknownTopicOrPartitionError(), True),
        # ... what the record is, or what it may not do, is not
        (MessageSizeTooLargeError(), False),
        (RecordListTooLargeError(), False),
        (TopicAuthorizationFailedError(), False),
        # aiokafka calls these permanent; for the record they are not: a new producer sends it
        (KafkaTimeoutError(), True),
        (OutOfOrderSequenceNumber(), True),
        (UnknownProducerId(), True),
        (InvalidProducerEpoch(), True),
        (ProducerFenced(), True),
        (IllegalStateError(), True),
        # a broker call cut off by asyncio.timeout: temporary
        (TimeoutError(), True),
        # not ours, not aiokafka's: a bug, never retried by the flag
        (ValueError("a bug"), False),
    ],
)
def test_kafka_errors_are_retriable_by_their_flag_with_corrections(
    error: BaseException, expected: bool
) -> None:
    assert RetryPolicy.retriable(error) is expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (GemeentebusError("base"), False),
        (ConfigurationError("no key"), False),
        (InvalidEvent(_BROKEN), False),
        (UndecodableEvent(_BROKEN), False),
        (UnknownSchema(_BROKEN), False),
        (KafkaUnavailable("down"), True),
        (RoutingFailed("KeyError"), False),
        (WorkerFailed("stopped"), False),
        (DeliveryFailed("503", retriable=True), True),
        (DeliveryFailed("not UTF-8", retriable=False), False),
    ],
)
def test_every_bus_exception_says_whether_it_is_retriable(
    error: GemeentebusError, expected: bool
) -> None:
    assert RetryPolicy.retriable(error) is expected
    assert error.retriable is expected


def test_only_producer_state_errors_spoil_the_producer() -> None:
    assert spoils_producer(OutOfOrderSequenceNumber())
    assert spoils_producer(KafkaTimeoutError())
    assert spoils_producer(ProducerFenced())
    assert not spoils_producer(KafkaConnectionError())
    assert not spoils_producer(MessageSizeTooLargeError())


def test_only_size_refusals_are_the_records_fault() -> None:
    assert refused_for_size(MessageSizeTooLargeError())
    assert refused_for_size(RecordListTooLargeError())
    assert not refused_for_size(TopicAuthorizationFailedError())
    assert not refused_for_size(KafkaConnectionError())


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


def test_the_webhook_policy_is_made_from_the_delivery_settings() -> None:
    settings = DeliverySettings(retry_window_s=60.0, initial_backoff_s=2.0, max_backoff_s=10.0)
    policy = RetryPolicy.from_settings(settings)
    assert policy == RetryPolicy(initial_s=2.0, max_s=10.0, give_up_after_s=60.0)
    defaults = RetryPolicy.from_settings(DeliverySettings())
    assert defaults == RetryPolicy(initial_s=1.0, max_s=600.0, give_up_after_s=24 * 3600.0)


def test_webhook_backoff_is_full_jitter_from_the_settings() -> None:
    policy = RetryPolicy.from_settings(DeliverySettings(initial_backoff_s=1.0, max_backoff_s=8.0))
    rng = random.Random(3)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (4, 8.0), (30, 8.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8


def test_wait_is_the_backoff_cut_at_the_window_then_none() -> None:
    policy = RetryPolicy(initial_s=1.0, max_s=100.0, give_up_after_s=60.0)
    failure = DeliveryFailed("503", retriable=True)
    rng = random.Random(1)
    assert 0 <= (policy.wait(failure, attempt=1, elapsed_s=0.0, rng=rng) or -1) <= 1.0
    # late in the window, the last wait ends at the window's end
    waits = [policy.wait(failure, attempt=10, elapsed_s=59.5, rng=rng) for _ in range(50)]
    assert all(w is not None and 0 <= w <= 0.5 for w in waits)
    assert policy.wait(failure, attempt=10, elapsed_s=60.0) is None  # the window has passed
    assert policy.wait(DeliveryFailed("no", retriable=False), attempt=1, elapsed_s=0.0) is None


def test_wait_keeps_to_a_retry_after_inside_the_window_and_gives_up_past_it() -> None:
    policy = RetryPolicy(initial_s=1.0, max_s=100.0, give_up_after_s=60.0)
    throttled = DeliveryFailed("429", retriable=True, retry_after=7.0)
    assert policy.wait(throttled, attempt=1, elapsed_s=0.0) == 7.0
    assert policy.wait(throttled, attempt=1, elapsed_s=53.0) == 7.0  # ends at the window
    assert policy.wait(throttled, attempt=1, elapsed_s=53.5) is None  # ends past it
    now = DeliveryFailed("503", retriable=True, retry_after=0.0)
    assert policy.wait(now, attempt=3, elapsed_s=10.0) == 0.0


def test_an_unbounded_policy_waits_forever_on_retriable_errors_only() -> None:
    for policy in (PRODUCE, WRITES, RETIRE, LANE_BUG):
        assert policy.give_up_after_s is None
        wait = policy.wait(KafkaConnectionError(), attempt=50, elapsed_s=1e9)
        assert wait is not None and 0 <= wait <= policy.max_s
        assert policy.wait(TopicAuthorizationFailedError(), attempt=1, elapsed_s=0.0) is None


@pytest.mark.parametrize(
    ("status", "delivered", "gone", "retriable", "retry_after"),
    [
        (200, True, False, False, False),
        (202, True, False, False, False),
        (204, True, False, False, False),
        (301, False, False, True, False),  # redirects are not followed: a failure
        (307, False, False, True, False),
        (400, False, False, True, False),
        (401, False, False, True, False),
        (404, False, False, True, False),
        (410, False, True, False, False),  # gone: retired, never retried
        (429, False, False, True, True),
        (500, False, False, True, False),
        (502, False, False, True, False),
        (503, False, False, True, True),
        (504, False, False, True, False),
    ],
)
def test_http_statuses_are_classified_by_one_table(
    status: int, delivered: bool, gone: bool, retriable: bool, retry_after: bool
) -> None:
    answer = http_answer(status)
    assert (answer.delivered, answer.gone, answer.retriable, answer.honours_retry_after) == (
        delivered,
        gone,
        retriable,
        retry_after,
    )


def test_a_policy_without_jitter_keeps_a_steady_capped_pace() -> None:
    steady = RetryPolicy(initial_s=1.0, max_s=4.0, jitter=False)
    assert [steady.delay(n) for n in (1, 2, 3, 4, 9)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert [KAFKA_READ.delay(n) for n in (1, 2, 50)] == [1.0, 1.0, 1.0]


def test_an_unknown_topic_is_missing_for_good_only_when_it_is_still_unknown() -> None:
    unknown = UnknownTopicOrPartitionError()
    assert not missing_for_good(unknown, "t.events.a", None)  # metadata may lag: once is fine
    assert not missing_for_good(unknown, "t.events.a", "t.events.b")
    assert missing_for_good(unknown, "t.events.a", "t.events.a")
    assert not missing_for_good(KafkaTimeoutError(), "t.events.a", "t.events.a")
