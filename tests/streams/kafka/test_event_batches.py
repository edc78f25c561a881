"""`EventBatches`: a backlog in full batches, quiet input at once, order kept, acks by hand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from streams.kafka.clients import EventBatches


class _Stream:
    """What `EventBatches` uses of a Faust stream: events handed on one loop turn apart (as
    Faust's conductor and channel queue do), the channel's queue, and `ack`."""

    def __init__(self) -> None:
        self.channel = self
        self.queue: asyncio.Queue[int] = asyncio.Queue()
        self.acked: list[int] = []

    def noack(self) -> _Stream:
        return self

    async def events(self) -> AsyncIterator[int]:
        while True:
            item = await self.queue.get()
            await asyncio.sleep(0)  # the hops between the fetcher and the stream
            yield item

    async def ack(self, event: Any) -> None:
        self.acked.append(event)


async def test_a_backlog_comes_in_full_batches_in_order() -> None:
    stream = _Stream()
    for i in range(1_200):
        stream.queue.put_nowait(i)
    batches = EventBatches(stream, 500)  # type: ignore[arg-type]
    seen: list[list[int]] = []
    async with asyncio.timeout(10):
        async for batch in batches:
            seen.append(list(batch))
            assert stream.acked == [i for b in seen[:-1] for i in b]  # nothing acked unasked
            await batches.ack(batch)
            if sum(map(len, seen)) == 1_200:
                break
    assert [len(b) for b in seen] == [500, 500, 200]
    assert [i for b in seen for i in b] == list(range(1_200))
    assert stream.acked == list(range(1_200))


async def test_quiet_input_goes_at_once_one_by_one() -> None:
    stream = _Stream()
    batches = EventBatches(stream, 500)  # type: ignore[arg-type]
    seen: list[list[int]] = []
    async with asyncio.timeout(10):
        stream.queue.put_nowait(0)
        async for batch in batches:
            seen.append(list(batch))
            if len(seen) == 3:
                break
            stream.queue.put_nowait(len(seen))  # the next event once the last one was taken
    assert seen == [[0], [1], [2]]
