"""Batched topic creation, its requests and its waiting, against a fake admin client.

A unit test of the chunking and bookkeeping only: what the broker does with those requests
is tested against the real one (`tests/streams/routing/test_store.py`,
`tests/streams/operations/test_subscription_set.py`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.admin import NewTopic
from aiokafka.errors import InvalidTopicError, RequestTimedOutError, TopicAlreadyExistsError

import streams.kafka.topics as topics_module
from streams.config import KafkaSettings, Settings
from streams.exceptions import KafkaUnavailable, TopicsRefused
from streams.kafka.creation import TopicSpec, create_missing
from streams.kafka.topics import subscription_topics


@dataclass
class _Response:
    topic_errors: list[tuple[str, int, str | None]]


@dataclass
class FakeAdmin:
    """Answers CreateTopics per topic (`codes`, default success) and metadata requests with
    the topics created `visible_after` requests ago."""

    existing: set[str] = field(default_factory=set)
    codes: dict[str, int] = field(default_factory=dict)
    visible_after: int = 0
    visible_at: float = 0.0  # time.monotonic() from which created topics show
    never_visible: set[str] = field(default_factory=set)
    requests: list[list[NewTopic]] = field(default_factory=list)
    described: list[list[str]] = field(default_factory=list)
    _created: dict[str, int] = field(default_factory=dict)  # name: partitions

    async def list_topics(self) -> list[str]:
        return sorted(self.existing)

    async def create_topics(self, new_topics: list[NewTopic], timeout_ms: int | None = None) -> Any:
        self.requests.append(list(new_topics))
        errors = []
        for topic in new_topics:
            code = self.codes.get(topic.name, 0)
            if code == 0:
                self._created[topic.name] = topic.num_partitions
            errors.append((topic.name, code, "refused" if code else None))
        return _Response(errors)

    async def describe_topics(self, topics: list[str] | None = None) -> list[Any]:
        self.described.append(list(topics or []))
        shown = len(self.described) > self.visible_after and time.monotonic() >= self.visible_at
        return [
            {"topic": name, "error_code": 0,
             "partitions": [{"partition": p, "leader": 1} for p in range(self._created[name])]}
            if shown and name in self._created and name not in self.never_visible
            else {"topic": name, "error_code": 3, "partitions": []}
            for name in topics or []
        ]  # fmt: skip


def kafka(**changes: Any) -> KafkaSettings:
    return KafkaSettings.single_node(topic_prefix="t", request_timeout_s=0.3, **changes)


def specs(n: int) -> list[TopicSpec]:
    return [TopicSpec(f"t.deliver.s{i:04d}", 1) for i in range(n)]


async def test_missing_topics_go_in_requests_of_at_most_chunk() -> None:
    admin = FakeAdmin(existing={"t.deliver.s0000", "t.deliver.s0001"})

    creation = await create_missing(admin, kafka(), specs(1_203), chunk=500, wait=False)

    assert [len(r) for r in admin.requests] == [500, 500, 201]
    asked = [t.name for r in admin.requests for t in r]
    assert asked == [s.name for s in specs(1_203)][2:]  # in order, each once
    assert creation.existed == ["t.deliver.s0000", "t.deliver.s0001"]
    assert len(creation.created) == 1_201 and not creation.refused
    assert admin.described == []  # wait=False: no metadata requests


async def test_a_topic_listed_twice_is_asked_for_once() -> None:
    admin = FakeAdmin()
    twice = [*specs(3), *specs(3)]
    await create_missing(admin, kafka(), twice, chunk=500, wait=False)
    assert [t.name for r in admin.requests for t in r] == [s.name for s in specs(3)]


async def test_each_topic_is_answered_on_its_own() -> None:
    refused, slow, other = "t.deliver.s0001", "t.deliver.s0002", "t.deliver.s0003"
    codes = {
        refused: InvalidTopicError.errno,
        slow: RequestTimedOutError.errno,
        other: TopicAlreadyExistsError.errno,
    }
    admin = FakeAdmin(codes=codes)

    creation = await create_missing(admin, kafka(), specs(5), chunk=2, wait=False)

    assert sorted(creation.created) == ["t.deliver.s0000", "t.deliver.s0004"]
    assert creation.existed == [other]  # another process was first: fine
    assert set(creation.refused) == {refused, slow}
    permanent = creation.refused[refused]
    assert isinstance(permanent, TopicsRefused) and refused in str(permanent)
    assert "InvalidTopicError" in permanent.refused[refused]
    assert isinstance(creation.refused[slow], KafkaUnavailable)  # retriable: the cluster busy


async def test_it_waits_until_the_metadata_has_every_topic_created() -> None:
    admin = FakeAdmin(existing={"t.deliver.s0000"}, visible_after=4)  # metadata requests

    creation = await create_missing(admin, kafka(), specs(7), chunk=3, wait=True)

    assert not creation.refused
    # the 6 created, asked for in requests of `chunk` names: two rounds see none, the third all
    assert [len(d) for d in admin.described] == [3, 3] * 3
    assert sorted(n for d in admin.described for n in d) == sorted(
        [s.name for s in specs(7)][1:] * 3
    )


async def test_a_topic_that_never_shows_is_refused_after_the_request_timeout() -> None:
    lost = "t.deliver.s0001"
    admin = FakeAdmin(never_visible={lost})

    creation = await create_missing(admin, kafka(), specs(3), chunk=500, wait=True)

    assert sorted(creation.created) == ["t.deliver.s0000", "t.deliver.s0002"]
    assert list(creation.refused) == [lost]
    assert "none of the 1 topic(s) still missing appeared in 0.3 s" in str(creation.refused[lost])


async def test_many_topics_get_time_for_their_partitions_before_any_is_given_up() -> None:
    # a broker shows new topics only once it made every partition's log: 2,000 topics
    # created at once show nothing for longer than the request timeout (0.3 s here), then
    # all; 0.02 s a partition pending is their allowance (0.3 + 50 x 0.02 = 1.3 s)
    admin = FakeAdmin(visible_at=time.monotonic() + 0.8)

    creation = await create_missing(admin, kafka(), specs(50), chunk=500, wait=True)

    assert not creation.refused
    assert sorted(creation.created) == [s.name for s in specs(50)]


def test_subscription_topics_have_the_configured_partitions() -> None:
    deliver, dlq = subscription_topics(kafka(deliver_partitions=4, dlq_partitions=2), "a")
    assert (deliver.name, deliver.partitions) == ("t.deliver.a", 4)
    assert (dlq.name, dlq.partitions) == ("t.deliver.a.dlq", 2)
    deliver, dlq = subscription_topics(kafka(partitions=12), "a")  # small by default
    assert (deliver.partitions, dlq.partitions) == (1, 1)


@pytest.mark.parametrize("name", ["deliver_partitions", "dlq_partitions"])
def test_partition_counts_are_at_least_one(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings(mode="test", kafka={name: 0})  # type: ignore[arg-type]


async def test_new_topics_are_not_looked_for_in_the_list_of_all() -> None:
    """A new subscription's topics: no listing of every topic in the cluster (slow with
    thousands); CreateTopics says which were there, and those are waited for too."""
    there = "t.deliver.s0001"

    class Unlisted(FakeAdmin):
        async def list_topics(self) -> list[str]:
            raise AssertionError("listed every topic")

    admin = Unlisted(codes={there: TopicAlreadyExistsError.errno}, visible_after=1)
    admin._created[there] = 4  # made by another, with a count of its own

    creation = await create_missing(admin, kafka(), specs(3), chunk=500, wait=True, new=True)

    assert creation.existed == [there] and not creation.refused
    assert admin.described == [[s.name for s in specs(3)]] * 2  # the one already there too


async def test_topics_are_described_in_requests_of_at_most_describe_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # every process describes every deliver topic when it starts: one request for the 4,000
    # topics of 2,000 subscriptions outlasted the request timeout on a busy broker
    asked: dict[str, list[int]] = {"metadata": [], "configs": []}

    class _Configs:
        def __init__(self, names: list[str]) -> None:
            self.names = names

        def to_object(self) -> dict[str, Any]:
            entries = [{"config_names": "min.insync.replicas", "config_value": "2"}]
            found = [{"resource_name": n, "config_entries": entries} for n in self.names]
            return {"resources": found}

    class Describing:
        async def start(self) -> None: ...

        async def close(self) -> None: ...

        async def describe_topics(self, topics: list[str]) -> list[Any]:
            asked["metadata"].append(len(topics))
            return [{"topic": n, "error_code": 0, "partitions": [{"replicas": [1, 2, 3]}]}
                    for n in topics]  # fmt: skip

        async def describe_configs(self, resources: list[Any]) -> list[Any]:
            asked["configs"].append(len(resources))
            return [_Configs([r.name for r in resources])]

    monkeypatch.setattr(topics_module, "make_admin", lambda settings: Describing())
    names = [s.name for s in specs(1_203)]

    states = await topics_module.describe_topics(kafka(), names)

    assert sorted(states) == names
    assert {s.min_insync_replicas for s in states.values()} == {2}
    assert asked == {"metadata": [500, 500, 203], "configs": [500, 500, 203]}
