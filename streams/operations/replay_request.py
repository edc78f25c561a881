"""What a replay is asked for, and where that lies in the events topics.

A `ReplayRequest` names a window (`from`/`to` as RFC 3339 times, or `fromOffsets`/`toOffsets`
per topic-partition) and optionally `types`, or a list of event `ids` (a window bounds the
search). Times are when the bus accepted an event (the record timestamp of its events topic).
`replay_window` resolves a request, once, to the first and the end offset of every partition
of the subscription's events topics; a window that starts before what the topics still keep
is refused (`BeyondRetention`), never silently shortened.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from aiokafka import TopicPartition
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from streams.config import Settings
from streams.contract import codec
from streams.exceptions import GemeentebusError
from streams.kafka.topics import Topics, partitions
from streams.kafka.window import consumer, offsets_at, oldest_kept
from streams.routing.subscriptions import Subscription

__all__ = [
    "BeyondRetention",
    "Offsets",
    "ReplayError",
    "ReplayRequest",
    "replay_window",
    "tp_name",
    "tp_of",
]

Offsets = dict[TopicPartition, int]


class ReplayError(GemeentebusError):
    """A replay that cannot be done as asked (unknown subscription, bad window)."""


class BeyondRetention(ReplayError):
    """The window starts before the oldest record the events topics still hold."""

    def __init__(self, oldest: datetime) -> None:
        self.oldest = oldest
        super().__init__(
            f"events before {codec.format_time(oldest)} are no longer kept (retention): "
            f"the oldest available time is {codec.format_time(oldest)}; replay from there"
        )


class ReplayRequest(BaseModel):
    """What to replay: a time window, an offset window (`{topic: {partition: offset}}`, the
    topic as its full name or its event type), or event ids (optionally within a window)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    start: AwareDatetime | None = Field(default=None, alias="from")
    end: AwareDatetime | None = Field(default=None, alias="to")
    from_offsets: dict[str, dict[int, int]] | None = Field(default=None, alias="fromOffsets")
    to_offsets: dict[str, dict[int, int]] | None = Field(default=None, alias="toOffsets")
    types: tuple[str, ...] | None = None
    ids: tuple[str, ...] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_window(self) -> ReplayRequest:
        timed = self.start is not None or self.end is not None
        offsets = self.from_offsets is not None or self.to_offsets is not None
        if timed and offsets:
            raise ValueError("give from/to times or fromOffsets/toOffsets, not both")
        if self.ids is None and self.start is None and self.from_offsets is None:
            raise ValueError("give from (a time), fromOffsets, or ids")
        if self.start and self.end and self.end <= self.start:
            raise ValueError("to must be after from")
        return self


def tp_name(tp: TopicPartition) -> str:
    """A topic-partition as a replay status names it: `topic:partition`."""
    return f"{tp.topic}:{tp.partition}"


def tp_of(name: str) -> TopicPartition:
    """The topic-partition a `tp_name` names."""
    topic, _, partition = name.rpartition(":")
    return TopicPartition(topic, int(partition))


async def replay_window(
    settings: Settings, subscription: Subscription, request: ReplayRequest
) -> tuple[Offsets, Offsets]:
    """The first offset and the end offset (exclusive) of every partition of the events topics
    of the subscription's types (only the request's `types`, if it names some) that the request
    covers; `BeyondRetention` when it starts before the oldest record kept."""
    topics = Topics(settings.kafka.topic_prefix)
    types = [t for t in subscription.types if request.types is None or t in request.types]
    reader = consumer(settings)
    await reader.start()
    try:
        tps = await partitions(settings.kafka, [topics.events(t) for t in types])
        if request.from_offsets is not None or request.to_offsets is not None:
            begins = dict(await reader.beginning_offsets(tps)) if tps else {}
            starts = {**begins, **_offsets(topics, request.from_offsets)}
            ends = {**await offsets_at(reader, tps, None), **_offsets(topics, request.to_offsets)}
            if any(starts[tp] < begins[tp] for tp in tps):
                oldest = await oldest_kept(reader, tps)
                raise BeyondRetention(oldest or datetime.now(UTC))
        else:
            if request.start is not None:
                oldest = await oldest_kept(reader, tps)
                if oldest is not None and request.start < oldest:
                    raise BeyondRetention(oldest)
                starts = await offsets_at(reader, tps, request.start)
            else:
                starts = dict(await reader.beginning_offsets(tps)) if tps else {}
            ends = await offsets_at(reader, tps, request.end)
    finally:
        await reader.stop()
    return {tp: starts[tp] for tp in tps}, {tp: ends[tp] for tp in tps}


def _offsets(topics: Topics, given: Mapping[str, Mapping[int, int]] | None) -> Offsets:
    """`{topic or event type: {partition: offset}}` as offsets of events topic-partitions."""
    out = {}
    for name, by_partition in (given or {}).items():
        topic = name if name.startswith(topics.events_prefix) else topics.events(name)
        out.update({TopicPartition(topic, p): o for p, o in by_partition.items()})
    return out
